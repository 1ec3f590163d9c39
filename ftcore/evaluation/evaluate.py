"""evaluate stage: the same test split through the base model and the fine-tuned candidate, scored for the task.

Language-model tasks (sft, multitask, dapt) are scored on what the model generates (exact match, token F1) and on
the likelihood of the reference (perplexity); a multitask recipe also gets every metric per task
(`<model>.<metric>.<task>`). Classification is scored with accuracy and F1 per class against a TF-IDF + logistic
regression baseline trained on the same train split, which is then the gate's reference when there is no champion
(an encoder without its trained head cannot classify, so there is no meaningful "base" score). The alignment
tasks (dpo, reward_model, rl) are scored in ftcore/evaluation/preference.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ftcore.config import LOWER_IS_BETTER, EvaluateConfig, RewardConfig
from ftcore.data.formats import TASK
from ftcore.evaluation.bootstrap import bootstrap_interval, perplexity_of
from ftcore.evaluation.classification import (
    classification_metrics,
    classify,
    confusion,
    plot_confusion,
    tfidf_baseline,
)
from ftcore.evaluation.generate import completion_nlls, generate
from ftcore.evaluation.preference import (
    LENGTH_BASELINE,
    evaluate_policies_on_pairs,
    evaluate_policies_on_reward,
    evaluate_reward_models,
)
from ftcore.evaluation.scoring import GENERATION_METRICS, score
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.load import load_trained, render_chat
from ftcore.outputs import EvalOutput

BASELINE = "tfidf"
CANDIDATE = "candidate"


def evaluate_models(models: dict[str, Path], splits: dict[str, Path], cfg: EvaluateConfig, out_dir: Path,
                    task: str = "sft", reward: RewardConfig | None = None,
                    reward_model_dir: Path | None = None, retained_test: Path | None = None,
                    champion: str | None = None) -> EvalOutput:
    """Score each named model folder on the test split: `base`, `start` (the registered version a recipe continues),
    `champion` (the current champion, NAME/VERSION in `champion`), `candidate`. Metrics are `<model>.<metric>`.
    Names given the same folder are scored once and reported under each. Task rl scores with `reward` (and the
    reward model in `reward_model_dir`). The starting model (`start`, else the first) is dpo's implicit-reward
    reference and, with `retained_test` (continual fine-tuning), the reference of `forgetting.<metric>`."""
    test = pd.read_parquet(splits["test"])
    reference = "base"
    aliases = same_folders(models)
    models = {name: path for name, path in models.items() if name not in aliases}
    start = aliases.get("start", "start" if "start" in models else next(iter(models)))
    match task:
        case "classification":
            metrics, predictions = evaluate_classifiers(models, test, pd.read_parquet(splits["train"]))
            reference = BASELINE
        case "dpo":
            metrics, predictions = evaluate_policies_on_pairs(models, test, cfg, start)
        case "reward_model":
            metrics, predictions = evaluate_reward_models(models, test, cfg)
            reference = LENGTH_BASELINE
        case "rl":
            if reward is None:
                raise ValueError("task rl is evaluated with the recipe's reward")
            metrics, predictions = evaluate_policies_on_reward(models, test, cfg, reward, reward_model_dir)
        case _:
            metrics, predictions = evaluate_language_models(models, test, cfg, task)
    if retained_test is not None:
        metrics.update(forgetting(models, pd.read_parquet(retained_test), cfg, task, start))
    metrics.update(aliased_metrics(metrics, aliases))
    artifacts = {"predictions": out_dir / "predictions.jsonl"}
    with atomic_dir(out_dir) as tmp:
        predictions.to_json(tmp / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
        if task == "classification":
            write_confusion(predictions, tmp)
            artifacts |= {name: out_dir / file for name, file in CONFUSION_FILES.items()}
    return EvalOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        predictions_path=out_dir / "predictions.jsonl",
        reference=reference,
        champion=champion,
        metrics={"test_rows": len(test), **metrics},
        artifacts=artifacts,
    )


# ---------------------------------------------------------------------------------------------------------------
# Classification


def evaluate_classifiers(models: dict[str, Path], test: pd.DataFrame,
                         train: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """Every model and the TF-IDF baseline: `accuracy`, `macro_f1`, `micro_f1` and per class `f1_<label>`,
    `precision_<label>`, `recall_<label>`."""
    texts, references = test["text"].astype(str).tolist(), test["label"].astype(str).tolist()
    predictions = pd.DataFrame({"text": texts, "label": references})
    predictions[BASELINE] = tfidf_baseline(train["text"].astype(str).tolist(), train["label"].astype(str).tolist(),
                                           texts)
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        predictions[name] = classify(model, tokenizer, texts)
    classes = sorted(set(references) | set(train["label"].astype(str)))
    metrics = {f"{name}.{metric}": value
               for name in [BASELINE, *models]
               for metric, value in classification_metrics(references, predictions[name], classes).items()}
    return metrics, predictions


CONFUSION_FILES = {"confusion_matrix": "confusion_matrix.png", "confusion_counts": "confusion_matrix.json"}


def write_confusion(predictions: pd.DataFrame, folder: Path) -> None:
    """The candidate's confusion matrix on the test split, as an image and as counts (true -> predicted -> n)."""
    labels = sorted(set(predictions["label"]) | set(predictions[CANDIDATE]))
    matrix = confusion(predictions["label"], predictions[CANDIDATE], labels)
    plot_confusion(matrix, labels, "Candidate on the test split", folder / CONFUSION_FILES["confusion_matrix"])
    counts = {true: {predicted: int(matrix[i, j]) for j, predicted in enumerate(labels)}
              for i, true in enumerate(labels)}
    (folder / CONFUSION_FILES["confusion_counts"]).write_text(json.dumps(counts, indent=1))


# ---------------------------------------------------------------------------------------------------------------
# Language models


def evaluate_language_models(models: dict[str, Path], test: pd.DataFrame, cfg: EvaluateConfig,
                             task: str) -> tuple[dict[str, float], pd.DataFrame]:
    """Every model's metrics on the test rows (`<model>.<metric>`, with `.ci_low`/`.ci_high`), and per task for a
    multitask recipe (`<model>.<metric>.<task>`). The predictions carry each model's output and per-example
    scores."""
    metrics: dict[str, float] = {}
    predictions = None
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        examples = eval_examples(test, tokenizer, task)
        if predictions is None:
            predictions = examples.drop(columns=["prompt", "completion"])
        rows, outputs = example_rows(model, tokenizer, examples, cfg)
        if outputs is not None:
            predictions[name] = outputs
        for metric, (stats, aggregate) in rows.items():
            if stats.ndim == 1:
                predictions[f"{name}.{metric}"] = stats
            metrics[f"{name}.{metric}"] = aggregate(stats)
            low, high = bootstrap_interval(stats, aggregate, cfg.bootstrap_resamples, cfg.confidence)
            if cfg.bootstrap_resamples:
                metrics[f"{name}.{metric}.ci_low"], metrics[f"{name}.{metric}.ci_high"] = low, high
            if TASK in examples:  # multitask: every metric per task too
                for group, index in examples.groupby(TASK, sort=True).indices.items():
                    metrics[f"{name}.{metric}.{group}"] = aggregate(stats[index])
    return metrics, predictions


def same_folders(models: dict[str, Path]) -> dict[str, str]:
    """name -> the earlier name given the same folder (e.g. `start` when the base is the continued version)."""
    first: dict[Path, str] = {}
    aliases = {}
    for name, path in models.items():
        key = Path(path).resolve()
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def aliased_metrics(metrics: dict[str, float], aliases: dict[str, str]) -> dict[str, float]:
    """Each scored model's metrics again under the names that shared its folder (also `retained.<model>.*`)."""
    copied = {}
    for alias, original in aliases.items():
        for prefix in ("", "retained."):
            head = f"{prefix}{original}."
            copied.update({f"{prefix}{alias}.{k[len(head):]}": v for k, v in metrics.items() if k.startswith(head)})
    return copied


def forgetting(models: dict[str, Path], retained: pd.DataFrame, cfg: EvaluateConfig, task: str,
               start: str) -> dict[str, float]:
    """`retained.<model>.<metric>` on the retained test rows, and `forgetting.<metric>`: the starting model's score
    minus the candidate's (for perplexity the candidate's minus the start's), so a positive value is lost ground."""
    scores, _ = evaluate_language_models(models, retained, cfg, task)
    candidate = list(models)[-1]
    lost = {}
    for metric in cfg.metrics:
        before, after = scores[f"{start}.{metric}"], scores[f"{candidate}.{metric}"]
        lost[f"forgetting.{metric}"] = after - before if metric in LOWER_IS_BETTER else before - after
    return {**{f"retained.{k}": v for k, v in scores.items()}, **lost}


def eval_examples(test: pd.DataFrame, tokenizer, task: str) -> pd.DataFrame:
    """What each test row asks the model (`prompt`) and the reference answer, as the model sees them (`completion`)
    and as written (`raw_prompt`, `raw_completion`, for the metrics and the predictions file)."""
    if task == "dapt":  # the whole text is the reference: perplexity only
        return pd.DataFrame({"prompt": "", "completion": test["text"], "raw_prompt": "",
                             "raw_completion": test["text"]})
    if "messages" in test:
        return pd.DataFrame([chat_question(json.loads(chat), tokenizer) for chat in test["messages"]])
    columns = ["prompt", "completion", "raw_prompt", "raw_completion"] + ([TASK] if TASK in test else [])
    return test[columns].reset_index(drop=True)


def chat_question(messages: list[dict[str, str]], tokenizer) -> dict[str, str]:
    """A chat up to its last assistant turn: that turn is the reference answer to the rendered turns before it."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    before = [m for m in messages[:last] if m["role"] == "user"]
    answer = messages[last]["content"]
    return {"prompt": render_chat(tokenizer, messages[:last], generation_prompt=True), "completion": answer,
            "raw_prompt": before[-1]["content"] if before else "", "raw_completion": answer}


def example_rows(model, tokenizer, examples: pd.DataFrame,
                 cfg: EvaluateConfig) -> tuple[dict[str, tuple[np.ndarray, Callable]], list[str] | None]:
    """Per metric: one row of statistics per example and the function that turns any subset of rows into the
    metric (ftcore/evaluation/scoring.py); and the greedy outputs when a generation metric needs them."""
    rows: dict[str, tuple[np.ndarray, Callable]] = {}
    outputs = None
    wanted = [m for m in cfg.metrics if m in GENERATION_METRICS]
    if wanted:
        outputs = [
            o.strip()
            for o in generate(model, tokenizer, examples["prompt"].tolist(), cfg.max_new_tokens, cfg.batch_size)
        ]
        for metric in wanted:
            _, stats, module = score(metric, outputs, examples["raw_completion"].astype(str).tolist())
            rows[metric] = (stats, module.aggregate)
    if "perplexity" in cfg.metrics:
        nlls = completion_nlls(model, tokenizer, examples["prompt"].tolist(), examples["completion"].tolist(),
                               cfg.batch_size)
        rows["perplexity"] = (np.array(nlls, dtype=float), perplexity_of)
    return rows, outputs
