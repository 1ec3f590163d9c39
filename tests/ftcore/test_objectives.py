"""Every objective (`task`) through collect -> clean -> init -> train on a tiny scratch model: what it trains on,
that the trainable weights move and the frozen ones do not, and that the loss falls. Plus the pieces each objective
adds: the assistant-turn mask of chats, the multitask mixture, classification evaluation against its baseline."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ftcore.data.clean import clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.errors import RecipeError, UserError
from ftcore.evaluation.evaluate import evaluate_models
from ftcore.evaluation.intervals import metric_key
from ftcore.evaluation.scorers import Scoring
from ftcore.jobs import clean_job
from ftcore.models.init import InitJob, init_stage
from ftcore.models.load import DEFAULT_CHAT_TEMPLATE, load_tokenizer
from ftcore.objectives import OBJECTIVES
from ftcore.recipe import load_recipe
from ftcore.training import train
from ftcore.training.examples import chat_example
from ftcore.training.jobs import TrainJob
from tests.conftest import DEMO_RECIPE
from tests.ftcore.objective_fixtures import ABBREVIATIONS, chat_rows, objective_recipe, recipe_file, write_jsonl

TRAINING = ["train.max_steps=15", "train.batch_size=8", "train.learning_rate=1e-2", "train.logging_steps=1",
            "train.max_length=64", "train.save_steps=100"]


def prepare(root: Path, task: str, *overrides: str):
    recipe = load_recipe(recipe_file(root, objective_recipe(root / "data", task)), [*TRAINING, *overrides])
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), root / "collect")
    dataset = clean_balance_stage(clean_job(recipe, collected), root / "clean")
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec),
                      root / "init")
    return recipe, dataset, base


def train_watching(root: Path, recipe, dataset, base):
    """train_stage, keeping the trained model and its parameters as they were before training."""
    from transformers import TrainerCallback

    seen = {}

    class Keep(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["model"] = model
            seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}

    out = train.train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec,
                                     reward=recipe.reward), root / "train", callbacks=[Keep()])
    return out, seen["model"], seen["before"]


@pytest.mark.parametrize("task", ["sft", "sft_messages", "dapt", "classification", "multitask"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_objective_trains_its_trainable_weights_only_and_the_loss_falls(task, method, tmp_path):
    recipe, dataset, base = prepare(tmp_path, task, f"method={{name: {method}}}")
    out, model, before = train_watching(tmp_path, recipe, dataset, base)
    assert_only_trainable_weights_moved(model, before, out.metrics, full=method == "full")
    m = out.metrics
    assert m["train_loss_last"] < 0.9 * m["train_loss_first"], (m["train_loss_first"], m["train_loss_last"])
    assert m["tokens_per_second"] > 0 and m["steps"] == 15


def assert_only_trainable_weights_moved(model, before: dict, metrics: dict, full: bool) -> None:
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    frozen = [n for n, p in params.items() if not p.requires_grad]
    assert trainable
    moved = [n for n in trainable if not params[n].detach().equal(before[n])]
    # Every trainable tensor moves, but a token embedding row or bias may stay when a batch never reaches it.
    assert len(moved) >= 0.9 * len(trainable), sorted(set(trainable) - set(moved))
    assert all(params[n].detach().equal(before[n]) for n in frozen)
    assert full == (not frozen)
    assert metrics["trainable_params"] == sum(params[n].numel() for n in trainable)


def test_a_chat_puts_the_loss_on_every_assistant_turn_and_nothing_else(tmp_path):
    _, _, base = prepare(tmp_path, "sft_messages", "train.max_steps=1")
    tokenizer = load_tokenizer(base.base_path)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE  # the scratch tokenizer has none: ftflow supplies one
    chat = chat_rows()[0]["messages"]
    example = chat_example(chat, tokenizer)
    trained_on = tokenizer.decode([t for t, m in zip(example["input_ids"], example["assistant_masks"], strict=True)
                                   if m])
    eos = tokenizer.eos_token
    # Each answer and the EOS ending it, not the newline the template writes after it (tests/models/test_loss_mask.py)
    assert trained_on == f"{chat[2]['content']}{eos}{chat[4]['content']}{eos}"
    assert "What does" not in trained_on and "abbreviations" not in trained_on


def test_dapt_packs_several_texts_into_each_sequence(tmp_path):
    from transformers import TrainerCallback

    recipe, dataset, base = prepare(tmp_path, "dapt", "train.max_steps=2")
    seen = {}

    class Keep(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen["rows"] = train_dataloader.dataset

    train.train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=OBJECTIVES["dapt"]),
                      tmp_path / "train", callbacks=[Keep()])
    texts = len(pd.read_parquet(dataset.splits["train"]))
    rows = seen["rows"]
    assert len(rows) < texts  # packed: fewer, fuller sequences
    assert sum(map(len, rows["seq_lengths"])) == texts and max(map(len, rows["seq_lengths"])) >= 2
    assert max(len(ids) for ids in rows["input_ids"]) <= 64


def test_multitask_mixes_the_tasks_by_weight_with_their_own_instructions(tmp_path):
    _, dataset, _ = prepare(tmp_path, "multitask", "train.max_steps=1")
    train_rows = pd.read_parquet(dataset.splits["train"])
    shares = train_rows["task"].value_counts(normalize=True)
    assert shares["expand"] == pytest.approx(2 / 3, abs=0.02) and shares["spam"] == pytest.approx(1 / 3, abs=0.02)
    spam = train_rows[train_rows["task"] == "spam"]
    assert spam["prompt"].str.startswith("Is this message spam or ham?").all()
    assert set(spam["raw_completion"]) == {"spam", "ham"}
    assert dataset.metrics["mixture.expand.rows"] + dataset.metrics["mixture.spam.rows"] == len(train_rows)
    test = pd.read_parquet(dataset.splits["test"])
    assert set(test["task"]) == {"expand", "spam"}  # the split is stratified by task


def test_classification_is_evaluated_per_class_against_a_tfidf_baseline(tmp_path):
    recipe, dataset, base = prepare(tmp_path, "classification", "train.max_steps=30")
    assert base.classes == ["ham", "spam"]
    out, _, _ = train_watching(tmp_path, recipe, dataset, base)
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["classification"])
    evaluation = evaluate_models({"candidate": out.model_path}, scoring,
                                 tmp_path / "eval")
    assert evaluation.reference == "tfidf"
    predictions = pd.read_json(evaluation.predictions_path, lines=True)
    assert set(predictions["candidate"]) <= {"spam", "ham"} and len(predictions) == evaluation.metrics["test_rows"]
    metrics = evaluation.metrics
    for model in ("candidate", "tfidf"):  # the metrics are those of the predictions written beside them
        key = functools.partial(metric_key, model)
        right = predictions[model] == predictions["label"]
        assert metrics[key("accuracy")] == pytest.approx(right.mean())
        assert metrics[key("accuracy.ci_low")] <= metrics[key("accuracy")] <= metrics[key("accuracy.ci_high")]
        spam = predictions["label"] == "spam"
        said_spam = predictions[model] == "spam"
        hits = (spam & said_spam).sum()
        f1 = 2 * hits / (spam.sum() + said_spam.sum())
        assert metrics[key("f1_spam")] == pytest.approx(f1)
        assert metrics[key("macro_f1")] == pytest.approx((metrics[key("f1_spam")] + metrics[key("f1_ham")]) / 2)
        assert metrics[key("macro_f1.ci_low")] <= metrics[key("macro_f1")] <= metrics[key("macro_f1.ci_high")]
    # The candidate's improvement over the baseline, with its paired interval: what the gate reads.
    assert metrics["improvement.macro_f1"] == pytest.approx(metrics["macro_f1"] - metrics["tfidf.macro_f1"])
    assert metrics["improvement.macro_f1.ci_low"] <= metrics["improvement.macro_f1"]
    # A recipe that names no metrics is scored on its objective's, and gated on the first.
    assert recipe.evaluate.metrics == list(recipe.spec.metrics) and all(m in metrics for m in recipe.spec.metrics)
    assert recipe.deploy.primary.metric == recipe.spec.metrics[0]
    # The confusion matrix counts the candidate's predictions (true -> predicted), and is drawn for MLflow.
    counts = json.loads(evaluation.artifacts["confusion_counts"].read_text())
    expected = predictions.groupby(["label", "candidate"]).size()
    assert {(t, p): n for t, row in counts.items() for p, n in row.items() if n} == expected.to_dict()
    assert evaluation.artifacts["confusion_matrix"].read_bytes().startswith(b"\x89PNG")


def test_a_classification_evaluation_on_a_terminal_shows_the_texts_classified_of_the_total(tmp_path, monkeypatch,
                                                                                          capsys):
    """ftcore/progress.py draws a bar only where stderr is a terminal: made one here, each bar's count and total
    are recorded as it closes."""
    import tqdm.auto

    recipe, dataset, base = prepare(tmp_path, "classification", "train.max_steps=2")
    out = train.train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train,
                                     objective=OBJECTIVES["classification"]), tmp_path / "train")
    closed = []

    class Recorded(tqdm.auto.tqdm):
        def close(self):
            if not self.disable:  # closing twice (the `with`, then garbage collection) records it once
                closed.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    monkeypatch.setattr("ftcore.progress.on_terminal", lambda: True)
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["classification"])
    evaluate_models({"candidate": out.model_path}, scoring, tmp_path / "eval")
    rows = len(pd.read_parquet(dataset.splits["test"]))
    assert ("candidate: classifying", rows, rows) in closed, closed
    shown = capsys.readouterr().err  # drawn at most every 0.1 s, so its last count may never be shown
    assert "candidate: classifying:" in shown and f"/{rows} [" in shown, shown


@pytest.mark.parametrize("method", ["prefix", "lora", "adapter"])
def test_a_decoder_classifier_scores_a_text_the_same_alone_and_padded_in_a_batch(method, tmp_path):
    """A Llama classifier reads each text's last token, found by the padding in the token ids."""
    from ftcore.evaluation.classification import class_logits
    from ftcore.models.load import load_trained

    recipe, dataset, base = prepare(tmp_path, "classification", f"method={{name: {method}}}", "train.max_steps=2")
    out = train.train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train,
                                     objective=OBJECTIVES["classification"]), tmp_path / "train")
    model, tokenizer = load_trained(out.model_path)
    texts = ["ok see you", "URGENT! You have won 1000 pounds, text CLAIM to 80000 now for your free entry"]
    alone, batch = class_logits(model, tokenizer, texts[:1])[0], class_logits(model, tokenizer, texts)[0]
    assert torch.allclose(alone, batch, atol=1e-4), (alone, batch)


@pytest.mark.parametrize("method", ["prompt", "p_tuning"])
def test_prompt_tuning_a_decoder_classifier_is_refused_naming_the_method(method, tmp_path):
    """Those methods pass embeddings, so the classifier could not find a short text's last token in a batch."""
    with pytest.raises(UserError, match=rf"^method.name: {method} does not fit this model: {method} passes "
                                        r"embeddings .* a classifier on a decoder \(llama\) cannot find"):
        prepare(tmp_path, "classification", f"method={{name: {method}}}")


def test_classification_with_focal_loss_trains_with_the_balance_stage_loss(tmp_path, monkeypatch):
    import ftcore.training.losses as losses

    calls = []
    focal = losses.focal_loss
    monkeypatch.setattr(losses, "focal_loss", lambda *a, **k: calls.append(1) or focal(*a, **k))
    recipe, dataset, base = prepare(tmp_path, "classification", "balance={strategy: focal_loss, focal_gamma: 2}",
                                    "train.max_steps=3")
    train_watching(tmp_path, recipe, dataset, base)
    assert len(calls) >= 3


def test_messages_are_evaluated_on_their_last_assistant_turn(tmp_path):
    recipe, dataset, base = prepare(tmp_path, "sft_messages", "train.max_steps=2", "evaluate.max_new_tokens=4")
    out, _, _ = train_watching(tmp_path, recipe, dataset, base)
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["sft"])
    evaluation = evaluate_models({"base": base.base_path, "candidate": out.model_path}, scoring,
                                 tmp_path / "eval")
    predictions = pd.read_json(evaluation.predictions_path, lines=True)
    assert predictions["raw_prompt"].str.startswith("And ").all()
    assert set(predictions["raw_completion"]) <= set(ABBREVIATIONS.values())
    assert evaluation.metrics["perplexity"] > 0


@pytest.mark.parametrize(("body", "problem"), [
    ({"task": "multitask", "data": {"sources": [{"type": "jsonl", "path": "x.jsonl"}]}},
     "every source needs `task:`"),
    ({"task": "sft", "data": {"sources": [{"type": "jsonl", "path": "x.jsonl", "task": "qa"}],
                              "tasks": {"qa": {}}}}, "apply to objective multitask"),
    ({"task": "multitask", "data": {"sources": [{"type": "jsonl", "path": "x.jsonl", "task": "qa"}],
                                    "tasks": {"summarise": {}}}}, "task 'qa' is not in data.tasks"),
    ({"task": "dapt", "data": {"sources": [{"type": "jsonl", "path": "x.jsonl"}], "format": "text"},
      "evaluate": {"metrics": ["exact_match"]}}, "exact_match cannot score objective 'dapt'"),
    ({"task": "classification", "data": {"sources": [{"type": "jsonl", "path": "x.jsonl"}], "format": "text_label"},
      "deploy": {"gate": [{"rule": "beat_champion", "metric": "perplexity"}]}},
     "deploy.gate.0 (beat_champion): metric 'perplexity' must be one of"),
])
def test_a_task_misconfigured_fails_in_one_line_naming_the_field(tmp_path, body, problem):
    write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe_file(tmp_path, body))
    assert problem in str(e.value)


def test_each_objective_defaults_to_its_own_metrics_and_gate(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    dapt = load_recipe(recipe_file(tmp_path, {"objective": "dapt", "data": {
        "sources": [{"type": "jsonl", "path": "x.jsonl"}], "format": "text"}}))
    sft = load_recipe(DEMO_RECIPE, ["evaluate.metrics=null", "deploy.gate=[{rule: beat_champion}]"])
    for recipe in (dapt, sft):
        assert recipe.evaluate.metrics == list(recipe.spec.metrics)
        assert recipe.deploy.primary.metric == recipe.spec.metrics[0]
    assert dapt.evaluate.metrics != sft.evaluate.metrics


@pytest.mark.parametrize("task", ["sft", "sft_messages"])
def test_a_max_length_that_leaves_no_room_for_the_answer_fails_naming_the_field(task, tmp_path):
    recipe, dataset, base = prepare(tmp_path, task, "train.max_length=8")
    with pytest.raises(UserError, match=r"^train\.max_length: 8 tokens leaves no room for the answer .* raise "
                                        r"max_length \(to about \d+"):
        train.train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                          tmp_path / "train")
    assert not (tmp_path / "train").exists()


def test_packing_a_classifier_is_refused_naming_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"train\.packing: objective classification scores one sequence"):
        prepare(tmp_path, "classification", "train.packing=true")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_packed_rows_keep_each_example_to_itself(tmp_path):
    """Each example in a packed row is scored exactly as it would be alone: the positions restart and transformers'
    block-diagonal mask keeps it from attending to the example before it."""
    from ftcore.models.load import load_model
    from ftcore.training.trainers import packed_rows_collator

    _, _, base = prepare(tmp_path, "dapt", "train.max_steps=1")
    tokenizer, model = load_tokenizer(base.base_path), load_model(base.base_path).eval()
    first, second = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("MI stands for", "BP is high"))
    batch = packed_rows_collator(tokenizer)([{"input_ids": first + second, "seq_lengths": [len(first), len(second)]},
                                             {"input_ids": second, "seq_lengths": [len(second)]}])
    assert "attention_mask" not in batch and batch["input_ids"].shape == (2, len(first) + len(second))
    assert batch["labels"][0, len(first)] == -100  # the second example's first token is not a target
    with torch.no_grad():
        # As the trainer calls it: without a cache (with one, transformers does not look for packed sequences).
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([second])).logits
    assert torch.allclose(packed[0, len(first):], alone[0], atol=1e-5)
    assert torch.allclose(packed[1, : len(second)], alone[0], atol=1e-5)
