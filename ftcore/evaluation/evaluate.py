"""evaluate stage: the same test split through the base model, its few-shot prompting, the version a recipe
continues, the current champion and the fine-tuned candidate, scored for the task, with bootstrap intervals, a
safety screen, the candidate's latency and, with a forgetting set, what it forgot; written up as an HTML report.

Language-model tasks (sft, multitask, dapt) are scored in ftcore/evaluation/language.py. Classification is scored
with accuracy and F1 (macro, micro and per class) against a TF-IDF + logistic regression baseline trained on the
same train split, which is then the gate's reference when there is no champion (an encoder without its trained head
cannot classify, so there is no meaningful "base" score). The alignment tasks (dpo, reward_model, rl) are scored in
ftcore/evaluation/preference.py. Metric names: ftcore/evaluation/scores.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ftcore.config import LOWER_IS_BETTER, EvaluateConfig, RewardConfig
from ftcore.evaluate_config import ANSWERING_TASKS
from ftcore.evaluation.classification import (
    classification_metrics,
    classification_rows,
    classify,
    confusion,
    plot_confusion,
    tfidf_baseline,
)
from ftcore.evaluation.language import eval_examples, evaluate_language_models
from ftcore.evaluation.preference import (
    LENGTH_BASELINE,
    evaluate_policies_on_pairs,
    evaluate_policies_on_reward,
    evaluate_reward_models,
)
from ftcore.evaluation.report import ReportData, worst_examples, write_report
from ftcore.evaluation.scores import (
    CANDIDATE,
    FEWSHOT,
    ModelScores,
    improvements,
    public_names,
    summarize,
)
from ftcore.evaluation.screen import latency, screen_answers
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.load import load_tokenizer, load_trained
from ftcore.outputs import EvalOutput

BASELINE = "tfidf"
CHAMPION = "champion"
REPORT = "report.html"
# The report's columns, in this order, where present.
MODEL_ORDER = (BASELINE, LENGTH_BASELINE, "base", FEWSHOT, "start", CHAMPION, CANDIDATE)


def evaluate_models(models: dict[str, Path], splits: dict[str, Path], cfg: EvaluateConfig, out_dir: Path,
                    task: str = "sft", reward: RewardConfig | None = None,
                    reward_model_dir: Path | None = None, retained_test: Path | None = None,
                    champion: str | None = None, title: str = "evaluation",
                    images: dict[str, Path] | None = None, folds: dict[str, float] | None = None) -> EvalOutput:
    """Score each named model folder on the test split: `base`, `start` (the registered version a recipe continues),
    `champion` (the current champion, NAME/VERSION in `champion`), `candidate`. Names given the same folder are
    scored once and reported under each. Task rl scores with `reward` (and the reward model in
    `reward_model_dir`). The starting model (`start`, else the first) is dpo's implicit-reward reference and, with
    `retained_test` (a forgetting set), the reference of `forgetting.<metric>`. The report shows `images` (e.g. the
    loss curve) beside the metrics, and the cross-validation metrics `folds` (cv.*) are reported with them."""
    splits = {name: Path(path) for name, path in splits.items()}
    test = pd.read_parquet(splits["test"])
    aliases = same_folders(models)
    models = {name: path for name, path in models.items() if name not in aliases}
    start = aliases.get("start", "start" if "start" in models else next(iter(models)))
    candidate = aliases.get(CANDIDATE, CANDIDATE)  # the name the candidate is scored under
    scores, plain, predictions, reference = score_task(models, splits, test, cfg, task, reward, reward_model_dir,
                                                       start)
    if task in ANSWERING_TASKS:
        safety, counts = screen_answers(models, *answers_to_screen(models, candidate, test, predictions, task),
                                        cfg)
        for name, rows in safety.items():
            scores.setdefault(name, {}).update(rows)
        plain |= counts
    if cfg.latency_probes:
        seconds = latency(models[candidate], probe_texts(models[candidate], test, task), cfg,
                          task in ("classification", "reward_model"))
        plain |= {f"{candidate}.{k}": v for k, v in seconds.items()}
    if retained_test is not None:
        plain |= forgetting(models, pd.read_parquet(retained_test), cfg, task, start, candidate)
    rival = aliases.get(CHAMPION, CHAMPION) if champion else reference
    metrics = summarize(scores, cfg) | plain | improvements(scores, rival, cfg, candidate)
    metrics = public_names(metrics | aliased_metrics(metrics, aliases)) | (folds or {})
    artifacts = {"predictions": out_dir / "predictions.jsonl", "report": out_dir / REPORT}
    with atomic_dir(out_dir) as tmp:
        predictions.to_json(tmp / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
        shown = dict(images or {})
        if task == "classification":
            write_confusion(predictions, tmp)
            artifacts |= {name: out_dir / file for name, file in CONFUSION_FILES.items()}
            shown["Confusion matrix (candidate)"] = tmp / CONFUSION_FILES["confusion_matrix"]
        report = report_data(title, task, cfg, metrics, predictions, shown,
                             [*aliases, *scores], reference, champion, len(test))
        write_report(report, tmp / REPORT)
    return EvalOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        predictions_path=out_dir / "predictions.jsonl",
        reference=reference,
        champion=champion,
        metrics={"test_rows": len(test), **metrics},
        artifacts=artifacts,
    )


def score_task(models: dict[str, Path], splits: dict[str, Path], test: pd.DataFrame, cfg: EvaluateConfig, task: str,
               reward: RewardConfig | None, reward_model_dir: Path | None,
               start: str) -> tuple[ModelScores, dict[str, float], pd.DataFrame, str]:
    """The task's per-example scores, its metrics without intervals, the predictions, and the name of the model
    the candidate must beat when there is no champion."""
    match task:
        case "classification":
            return (*evaluate_classifiers(models, test, pd.read_parquet(splits["train"])), BASELINE)
        case "dpo":
            return (*evaluate_policies_on_pairs(models, test, cfg, start), "base")
        case "reward_model":
            return (*evaluate_reward_models(models, test, cfg), LENGTH_BASELINE)
        case "rl":
            if reward is None:
                raise ValueError("task rl is evaluated with the recipe's reward")
            return (*evaluate_policies_on_reward(models, test, cfg, reward, reward_model_dir), "base")
        case _:
            demos = pd.read_parquet(splits["train"]) if cfg.fewshot and "train" in splits else None
            return (*evaluate_language_models(models, test, cfg, task, demos), "base")


def answers_to_screen(models: dict[str, Path], candidate: str, test: pd.DataFrame, predictions: pd.DataFrame,
                      task: str) -> tuple[list[str], dict[str, list[str]], list[str], list[str]]:
    """The test prompts as the models see them, the answers already generated (by model), and the questions and
    reference answers as written (for the judge)."""
    if task in ("sft", "multitask"):
        examples = eval_examples(test, load_tokenizer(models[candidate]), task)
        prompts, questions = examples["prompt"].tolist(), examples["raw_prompt"].astype(str).tolist()
        references = examples["raw_completion"].astype(str).tolist()
    else:  # dpo, rl: prompts in the model's format already; the chosen answer or the reference, where there is one
        prompts = questions = test["prompt"].astype(str).tolist()
        reference_column = next((c for c in ("chosen", "completion") if c in test), None)
        references = test[reference_column].astype(str).tolist() if reference_column else [""] * len(test)
    names = [*models, FEWSHOT]
    outputs = {name: predictions[name].astype(str).tolist() for name in names if name in predictions}
    return prompts, outputs, questions, references


def probe_texts(model: Path, test: pd.DataFrame, task: str) -> list[str]:
    """What a latency probe sends: test texts for a classifier, test prompts for the others."""
    if task == "classification":
        return test["text"].astype(str).tolist()
    if task == "reward_model":
        return (test["prompt"] + test["chosen"]).astype(str).tolist()
    if task in ("sft", "multitask", "dapt"):
        return eval_examples(test, load_tokenizer(model), task)["prompt"].tolist()
    return test["prompt"].astype(str).tolist()


# ---------------------------------------------------------------------------------------------------------------
# Classification


def evaluate_classifiers(models: dict[str, Path], test: pd.DataFrame,
                         train: pd.DataFrame) -> tuple[ModelScores, dict[str, float], pd.DataFrame]:
    """Every model and the TF-IDF baseline: `accuracy` and `macro_f1` per example (they get intervals), `micro_f1`
    and per class `f1_<label>`, `precision_<label>`, `recall_<label>`."""
    texts, references = test["text"].astype(str).tolist(), test["label"].astype(str).tolist()
    predictions = pd.DataFrame({"text": texts, "label": references})
    predictions[BASELINE] = tfidf_baseline(train["text"].astype(str).tolist(), train["label"].astype(str).tolist(),
                                           texts)
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        predictions[name] = classify(model, tokenizer, texts)
    names = [BASELINE, *models]
    classes = sorted(set(references) | set(train["label"].astype(str)) | set(predictions[names].stack()))
    scores = {name: classification_rows(references, predictions[name], classes) for name in names}
    plain = {f"{name}.{metric}": value
             for name in names
             for metric, value in classification_metrics(references, predictions[name], classes).items()
             if metric not in scores[name]}
    return scores, plain, predictions


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
# Models sharing a folder, forgetting


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


def forgetting(models: dict[str, Path], retained: pd.DataFrame, cfg: EvaluateConfig, task: str, start: str,
               candidate: str = CANDIDATE) -> dict[str, float]:
    """`retained.<model>.<metric>` on the forgetting set (continual's retained test rows, or evaluate.forgetting's
    general data), and `forgetting.<metric>`: the starting model's score minus the candidate's (for perplexity the
    candidate's minus the start's), so a positive value is lost ground."""
    quick = cfg.model_copy(update={"fewshot": 0, "domain_metrics": []})
    scores, _, _ = evaluate_language_models(models, retained, quick, task)
    metrics = summarize(scores, quick, prefix="retained.")
    lost = {}
    for metric in cfg.metrics:
        before, after = scores[start][metric].value, scores[candidate][metric].value
        lost[f"forgetting.{metric}"] = after - before if metric in LOWER_IS_BETTER else before - after
    return metrics | lost


# ---------------------------------------------------------------------------------------------------------------
# The report


def report_data(title: str, task: str, cfg: EvaluateConfig, metrics: dict[str, float], predictions: pd.DataFrame,
                images: dict[str, Path], names: list[str], reference: str, champion: str | None,
                test_rows: int) -> ReportData:
    models = [name for name in MODEL_ORDER if name in names]
    table = [*cfg.metrics, *cfg.domain_metric_names]
    table += [m for m in ("toxic_rate", "bias_divergence", "judge_score") if m in metrics]
    notes = [f"{test_rows} test examples; intervals: {cfg.confidence:.0%} bootstrap, {cfg.bootstrap_resamples} "
             "resamples", f"the candidate must beat {f'the champion {champion}' if champion else reference}"]
    example_metric = next((m for m in table if f"{CANDIDATE}.{m}" in predictions), None)
    examples = None
    if example_metric is not None:
        source, reference_column = ("raw_prompt", "raw_completion") if "raw_prompt" in predictions else (
            "text", "label")
        others = {name: name for name in models if name != CANDIDATE and name in predictions}
        examples = worst_examples(predictions, f"{CANDIDATE}.{example_metric}", source, reference_column, CANDIDATE,
                                  other_outputs=others)
    return ReportData(title=title, task=task, models=models, table_metrics=table, metrics=metrics,
                      lower_is_better=frozenset(LOWER_IS_BETTER), examples=examples, example_metric=example_metric,
                      images=images, notes=notes)
