"""The evaluate stage's parts: domain metrics, few-shot prompts, the forgetting set, paired intervals, public
metric names, the toxicity screen and k-fold cross-validation, on tiny seeded models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from ftcore.data.retained import held_out_data
from ftcore.errors import DataError
from ftcore.evaluation.bootstrap import paired_interval
from ftcore.evaluation.config import DomainMetricSpec
from ftcore.evaluation.domain import METRICS, MetricParams, domain_metric, domain_scores
from ftcore.evaluation.intervals import public_names
from ftcore.evaluation.language import eval_examples, fewshot_examples
from ftcore.evaluation.scorers import Scoring
from ftcore.evaluation.screen import toxic_rows
from ftcore.models.load import load_tokenizer
from ftcore.recipe import load_recipe
from ftcore.safety.config import ToxicityScreenConfig
from ftcore.training.jobs import TrainJob
from tests.ftcore.objective_fixtures import objective_recipe, qa_rows, recipe_file, write_jsonl
from tests.ftcore.test_objectives import prepare


def test_clinical_terms_rewards_the_right_expansion_however_phrased():
    scores = domain_scores("clinical_terms", {},
                           ["It is a pulmonary embolism.", "myocardial infarction", "blood pressure and heart rate",
                            "no idea"],
                           ["pulmonary embolism", "pulmonary embolism", "blood pressure", "no idea"], [""] * 4)
    assert scores.tolist() == [1.0, 0.0, 0.5, 1.0]  # right; wrong term; one wrong term added; nothing expected


def test_domain_metrics_are_checked_and_cannot_shadow_built_ins(tmp_path):
    with pytest.raises(ValidationError, match="'exact_match' is a built-in metric"):
        DomainMetricSpec(metric="exact_match")
    with pytest.raises(KeyError, match=r"unknown domain metric 'nope'; available: .*clinical_terms"):
        METRICS.get("nope")

    @domain_metric("too_few_scores", params=MetricParams)
    def too_few(outputs, references, prompts, params):
        return [1.0]

    with pytest.raises(ValueError, match="'too_few_scores' returned 1 scores for 2 answers"):
        domain_scores("too_few_scores", {}, ["a", "b"], ["a", "b"], ["", ""])
    with pytest.raises(DataError, match=r"clinical_terms: glossary .*missing.json"):
        domain_scores("clinical_terms", {"glossary": str(tmp_path / "missing.json")}, ["a"], ["a"], [""])


@pytest.mark.parametrize("task", ["sft", "sft_messages"])
def test_fewshot_prompts_show_k_training_examples_before_each_test_prompt(tmp_path, task):
    _, dataset, base = prepare(tmp_path, task)
    tokenizer = load_tokenizer(base.base_path)
    train, test = (pd.read_parquet(dataset.splits[s]) for s in ("train", "test"))
    plain = eval_examples(test, tokenizer)
    shown = fewshot_examples(test, train, tokenizer, k=3)
    assert (shown["raw_completion"] == plain["raw_completion"]).all()  # the same questions and references
    demos = eval_examples(train, tokenizer)
    for prompt, original in zip(shown["prompt"], plain["prompt"], strict=True):
        if task == "sft":
            assert prompt.endswith(original)
        assert sum(answer in prompt for answer in demos["raw_completion"].unique()) >= 2  # the demos' answers
    assert shown["prompt"].str.len().min() > plain["prompt"].str.len().max() - 1


def test_a_missing_probe_prompts_file_fails_when_the_recipe_loads(tmp_path):
    from ftcore.errors import RecipeError
    from tests.conftest import DEMO_RECIPE

    with pytest.raises(RecipeError, match=r"evaluate\.safety\.bias\.prompts: .*nope\.txt not found"):
        load_recipe(DEMO_RECIPE, ["evaluate.safety.bias.prompts=nope.txt"])


def test_a_general_forgetting_set_is_templated_and_capped(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path, objective_recipe(tmp_path / "data", "sft")))
    general = write_jsonl(tmp_path / "general.jsonl", [{"prompt": r["question"], "completion": r["answer"]}
                                                       for r in qa_rows()])
    held_out = pd.read_parquet(held_out_data(general, 7, recipe.data).test)
    assert len(held_out) == 7 and held_out["prompt"].str.startswith("Question: ").all()
    with pytest.raises(DataError, match=r"evaluate\.forgetting\.data: .*nothing.jsonl not found"):
        held_out_data(tmp_path / "nothing.jsonl", 7, recipe.data)


def test_the_paired_interval_is_that_of_the_difference():
    rng = np.random.default_rng(0)
    reference = rng.random(200)
    low, high = paired_interval(reference + 0.1, reference, np.mean, 500, 0.95)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)  # the shared variation cancels exactly
    noisy = reference + 0.1 + rng.normal(0, 0.05, 200)
    low, high = paired_interval(noisy, reference, np.mean, 500, 0.95)
    assert 0 < low < 0.1 < high


def test_the_candidates_metrics_are_named_bare_and_the_others_keep_their_prefix():
    assert public_names({"candidate.exact_match": 1, "candidate.exact_match.ci_low": 0.5, "base.exact_match": 0,
                         "retained.candidate.perplexity": 3, "retained.base.perplexity": 2,
                         "forgetting.perplexity": 1}) == {
        "exact_match": 1, "exact_match.ci_low": 0.5, "base.exact_match": 0, "retained.perplexity": 3,
        "retained.base.perplexity": 2, "forgetting.perplexity": 1}


def test_the_toxicity_screen_counts_outputs_at_or_above_the_threshold():
    rows = toxic_rows(["a fine answer", "you idiot", "stupid idiot"], ToxicityScreenConfig())
    assert rows.values.tolist() == [0.0, 1.0, 1.0] and rows.value == pytest.approx(2 / 3)
    strict = toxic_rows(["you idiot", "stupid idiot"], ToxicityScreenConfig(threshold=0.7))
    assert strict.values.tolist() == [0.0, 1.0]  # one lexicon hit scores 0.5, two 0.75


@pytest.mark.parametrize("task", ["sft", "classification"])
def test_cross_validation_trains_and_scores_every_fold(tmp_path, task):
    from ftcore.evaluation.cross_validation import cross_validate
    from ftcore.jobs import evaluate_job
    from ftcore.outputs import TrainOutput
    from ftcore.pins import Pins

    recipe, dataset, base = prepare(tmp_path, task, "train.max_steps=4", "evaluate.max_new_tokens=4",
                                    "evaluate.cross_validation=3")
    unused = TrainOutput(path=tmp_path, content_hash="-", model_path=base.base_path, history_path=tmp_path)  # no fold
    job = evaluate_job(recipe, Pins(sources={}), base, unused, dataset)
    metrics = cross_validate(job, tmp_path / "cv")
    assert metrics["cv.folds"] == 3
    for metric in recipe.evaluate.metrics:
        assert np.isfinite(metrics[f"cv.{metric}.mean"]) and metrics[f"cv.{metric}.std"] >= 0
    assert not any((tmp_path / "cv").iterdir())  # the fold models are deleted once scored
    with pytest.raises(DataError, match="lower k"):
        few = dataset.model_copy(update={"splits": {"train": dataset.splits["test"]}})
        cross_validate(job.model_copy(update={"dataset": few, "evaluate": recipe.evaluate.model_copy(
            update={"cross_validation": 20})}), tmp_path / "cv")


def test_predictions_keep_the_prompt_the_model_saw(tmp_path):
    """The report's worst examples and the judge read the predictions file: it holds each model's output."""
    from ftcore.evaluation.evaluate import evaluate_models
    from ftcore.training.train import train_stage

    recipe, dataset, base = prepare(tmp_path, "sft", "train.max_steps=4", "evaluate.max_new_tokens=4",
                                    "evaluate.fewshot=2", "evaluate.bootstrap_resamples=50",
                                    "evaluate.latency_probes=2")
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train), tmp_path / "train")
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate)
    out = evaluate_models({"base": base.base_path, "candidate": trained.model_path}, scoring,
                          tmp_path / "evaluate")
    predictions = pd.read_json(out.predictions_path, lines=True)
    assert {"base", "fewshot", "candidate", "candidate.exact_match"} <= set(predictions.columns)
    assert {"fewshot.exact_match", "toxic_rate", "base.toxic_rate", "latency_p95_s"} <= out.metrics.keys()
    assert 0 < out.metrics["latency_p50_s"] <= out.metrics["latency_p95_s"]
    report = out.artifacts["report"].read_text()
    assert ">fewshot</th>" in report and "Worst examples" in report
