"""The alignment tasks on a tiny scratch model: preference optimisation (DPO with an adapter or full fine-tuning,
KTO, ORPO), reward models and online RL (GRPO, RLOO) train their trainable weights and log what they optimise; the
evaluate stage scores them; reward functions register like cleaning steps; recipes refuse options that do not fit
the task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ftcore.alignment.rewards import REWARDS, reward_columns, score
from ftcore.errors import DataError, RecipeError
from ftcore.evaluation.evaluate import evaluate_models
from ftcore.evaluation.preference import pairwise_wins
from ftcore.evaluation.scorers import Scoring
from ftcore.objectives import OBJECTIVES
from ftcore.recipe import load_recipe
from tests.ftcore.objective_fixtures import objective_recipe, recipe_file
from tests.ftcore.test_objectives import assert_only_trainable_weights_moved, prepare, train_watching


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_prefers_the_chosen_answers_it_was_trained_on_and_on_held_out_pairs(method, tmp_path):
    recipe, dataset, base = prepare(tmp_path, "dpo", f"method={{name: {method}}}")
    out, model, before = train_watching(tmp_path, recipe, dataset, base)
    assert_only_trainable_weights_moved(model, before, out.metrics, full=method == "full")
    m = out.metrics
    assert m["train_loss_first"] == pytest.approx(np.log(2), abs=0.01)  # policy == reference at step 0
    assert m["train_loss_last"] < 0.5 * m["train_loss_first"]
    assert m["reward_accuracy_last"] > 0.5 and m["eval_reward_accuracy"] > 0.5 and m["reward_margin_last"] > 0
    history = json.loads(out.history_path.read_text())
    assert any("rewards/accuracies" in h for h in history) and any("eval_rewards/margins" in h for h in history)

    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["dpo"])
    evaluation = evaluate_models({"base": base.base_path, "candidate": out.model_path}, scoring,
                                 tmp_path / "evaluate")
    e = evaluation.metrics
    assert e["base.reward_accuracy"] == 0.5 and e["base.reward_margin"] == 0  # the reference against itself
    assert e["reward_accuracy"] > 0.5 and e["reward_margin"] > 0
    assert e["perplexity"] < e["base.perplexity"]  # the chosen answers became likelier
    predictions = pd.read_json(evaluation.predictions_path, lines=True)
    assert len(predictions) == e["test_rows"] and (predictions["candidate.margin"] > 0).mean() > 0.5


@pytest.mark.parametrize("algorithm", ["kto", "orpo"])
def test_kto_and_orpo_train_on_the_same_pairs(algorithm, tmp_path):
    recipe, dataset, base = prepare(tmp_path, "dpo", f"train.preference={{algorithm: {algorithm}}}")
    out, model, before = train_watching(tmp_path, recipe, dataset, base)
    assert_only_trainable_weights_moved(model, before, out.metrics, full=False)
    assert out.metrics["train_loss_last"] < out.metrics["train_loss_first"]
    assert out.metrics["reward_margin_last"] > 0  # chosen answers above rejected ones, by each method's reward


def test_a_reward_model_scores_chosen_above_rejected_against_the_length_baseline(tmp_path):
    recipe, dataset, base = prepare(tmp_path, "reward_model")
    assert base.classes == ["reward"]  # one output: the score
    out, model, before = train_watching(tmp_path, recipe, dataset, base)
    assert_only_trainable_weights_moved(model, before, out.metrics, full=False)
    assert out.metrics["reward_accuracy_last"] > 0.5 and out.metrics["eval_reward_accuracy"] > 0.5
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["reward_model"])
    e = evaluate_models({"candidate": out.model_path}, scoring,
                        tmp_path / "evaluate")
    assert e.reference == "length"
    test = pd.read_parquet(dataset.splits["test"])
    longer = pairwise_wins(test["chosen"].str.len().to_numpy(), test["rejected"].str.len().to_numpy()).mean()
    assert e.metrics["length.reward_accuracy"] == longer
    assert e.metrics["reward_accuracy"] > 0.5 and e.metrics["reward_margin"] > 0


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_samples_answers_scores_them_with_the_reward_functions_and_moves_the_policy(algorithm, tmp_path):
    recipe, dataset, base = prepare(
        tmp_path, "rl", f"train.rl={{algorithm: {algorithm}, num_generations: 4, max_completion_length: 8}}")
    out, model, before = train_watching(tmp_path, recipe, dataset, base)
    assert_only_trainable_weights_moved(model, before, out.metrics, full=False)
    history = json.loads(out.history_path.read_text())
    logged = {k for h in history for k in h}
    assert {"reward", "rewards/length/mean", "rewards/reference_f1/mean"} <= logged
    assert {"mean_reward_first", "mean_reward_last"} <= out.metrics.keys()

    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["rl"], reward=recipe.reward)
    e = evaluate_models({"base": base.base_path, "candidate": out.model_path}, scoring,
                        tmp_path / "evaluate").metrics
    for prefix in ("base.", ""):  # the candidate's metrics carry no prefix
        weighted = e[f"{prefix}reward.length"] + 0.5 * e[f"{prefix}reward.reference_f1"]
        assert e[f"{prefix}mean_reward"] == pytest.approx(weighted)


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_wins(np.array([2.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 3.0, 0.0])).tolist() == [1, 0.5, 0, 0.5]
    assert pairwise_wins(np.array([2.0, 2.0]), np.array([1.0, 1.0])).mean() == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Reward functions


def test_reward_functions_are_discovered_from_ftcore_and_data_recipes():
    rewards = REWARDS.entries()
    assert {"length", "contains", "reference_f1", "non_toxic"} <= rewards.keys()
    assert rewards["safe_refusal"].module == "data_recipes.rewards.safe_refusal"


def test_built_in_reward_functions_score_each_answer():
    answers = ["blood pressure", "I'm sorry, I can't help with that", "high blood pressure and heart rate"]
    columns = reward_columns(pd.DataFrame({"completion": ["blood pressure"] * 3}))
    assert list(columns) == ["reference"]
    assert score("contains", {"words": ["blood", "rate"]}, [""] * 3, answers) == [0.5, 0.0, 1.0]
    assert score("length", {"target_words": 2}, [""] * 3, answers) == [1.0, 0.0, 0.0]
    f1 = score("reference_f1", {}, [""] * 3, answers, columns.to_dict(orient="list"))
    assert f1[0] == 1.0 and f1[1] == 0.0 and 0 < f1[2] < 1
    assert score("safe_refusal", {}, [""] * 3, answers) == [0.0, 1.0, 0.0]
    with pytest.raises(DataError, match="has no column 'reference'"):
        score("reference_f1", {}, [""], ["x"], {})


def test_a_reward_function_returning_the_wrong_number_of_scores_is_named():
    from ftcore.alignment.rewards import RegisteredReward

    REWARDS.add(RegisteredReward("broken", lambda prompts, completions, p, columns: [1.0], "tests.broken"))
    try:
        with pytest.raises(ValueError, match=r"reward function 'broken' \(tests.broken\) returned 1 scores for 2"):
            score("broken", {}, ["", ""], ["a", "b"])
    finally:
        REWARDS.unregister("broken")


# ---------------------------------------------------------------------------------------------------------------
# Recipes


def load(tmp_path, task: str, *overrides: str):
    return load_recipe(recipe_file(tmp_path, objective_recipe(tmp_path / "data", task)), list(overrides))


@pytest.mark.parametrize(("task", "override", "message"), [
    ("rl", "reward=null", "reward: objective rl needs it"),
    ("dpo", "reward={functions: [{function: length}]}", "only objective rl takes one, not 'dpo'"),
    ("rl", "reward={functions: [{function: lenght}]}", "unknown reward function 'lenght'; available: "),
    ("rl", "reward={functions: [{function: contains, word: [a]}]}", "word: unknown field"),
    ("rl", "reward={}", "give a reward model"),
    ("rl", "train.batch_size=6", r"train.batch_size \(6\) must be a multiple of train.rl.num_generations \(4\)"),
    ("sft", "train.preference={beta: 0.2}", "train.preference: only for objective dpo"),
    ("dpo", "train.rl={num_generations: 2}", "train.rl: only for objective rl"),
    ("dpo", "train.preference={algorithm: kto, loss_type: [ipo]}", "loss_type: only for algorithm: dpo"),
    ("dpo", "train.preference={loss_type: [sigmoid, sft], loss_weights: [1.0]}", "one weight per loss_type"),
    ("dpo", "train.packing=true", "train.packing: objective dpo scores one sequence at a time"),
    ("sft", "model.version=2", "version: only for source: champion"),
    ("dpo", "evaluate.metrics=[exact_match]", "exact_match cannot score objective 'dpo'"),
])
def test_alignment_options_that_do_not_fit_the_task_are_refused(tmp_path, task, override, message):
    with pytest.raises(RecipeError, match=message):
        load(tmp_path, task, override)


def test_each_alignment_task_defaults_to_its_metrics_and_gate(tmp_path):
    for task, gate in (("dpo", "reward_accuracy"), ("reward_model", "reward_accuracy"), ("rl", "mean_reward")):
        recipe = load(tmp_path / task, task)
        assert recipe.deploy.primary.metric == gate and recipe.evaluate.metrics[0] == gate
