"""evaluate stage: the same test split through the base model, its few-shot prompting, the version a recipe
continues, the current champion and the fine-tuned candidate, scored with the objective's scorer
(ftcore/evaluation/scorers.py), with bootstrap intervals, a safety screen, the candidate's latency and, with a
forgetting set, what it forgot; written up as an HTML report. Metric names: ftcore/evaluation/intervals.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftcore.columns import IMAGES_COLUMN
from ftcore.evaluation.config import LOWER_IS_BETTER, EvaluateConfig
from ftcore.evaluation.cross_validation import cross_validate
from ftcore.evaluation.intervals import CANDIDATE, FEWSHOT, improvements, public_names, source_name, summarize
from ftcore.evaluation.jobs import EvaluateJob
from ftcore.evaluation.language import evaluate_language_models
from ftcore.evaluation.preference import LENGTH_BASELINE
from ftcore.evaluation.report import ReportData, example_sets, write_report
from ftcore.evaluation.scorers import BASELINE, CONFUSION_FILES, SCORERS, Scorer, Scoring, write_confusion
from ftcore.evaluation.screen import latency, screen_answers
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.registered import model_folder
from ftcore.outputs import EvalOutput

CHAMPION = "champion"
REPORT = "report.html"
# The report's columns, in this order, where present.
MODEL_ORDER = (BASELINE, LENGTH_BASELINE, "base", FEWSHOT, "start", CHAMPION, CANDIDATE)


def evaluate_stage(job: EvaluateJob, out_dir: Path) -> EvalOutput:
    """Score the candidate beside the base model (when its base is a model of the same kind), the version it
    continued, and the champion; with evaluate.cross_validation, k folds trained and scored first."""
    models = {}
    # A classifier's or reward model's base, and a language model it started from, have no trained head to compare.
    if not job.objective.classifies:
        models["base"] = job.base.base_path
        if job.start is not None:
            models["start"] = model_folder(job.start)
    if job.champion is not None:
        models[CHAMPION] = model_folder(job.champion)
    models |= {source_name(task): model_folder(ref) for task, ref in job.sources.items()}
    models[CANDIDATE] = job.trained.model_path
    folds = cross_validate(job, out_dir.with_name(f"{out_dir.name}-folds")) if job.evaluate.cross_validation else {}
    scoring = Scoring(splits=job.dataset.splits, evaluate=job.evaluate, objective=job.objective, reward=job.reward,
                      reward_model_dir=model_folder(job.reward_model) if job.reward_model else None,
                      retained_test=job.forgetting.test if job.forgetting else None,
                      champion=job.champion.label if job.champion else None, title=job.title,
                      images={"Training loss": job.trained.path / "loss.png"}, folds=folds, split=job.split)
    return evaluate_models(models, scoring, out_dir)


def evaluate_models(models: dict[str, Path], scoring: Scoring, out_dir: Path) -> EvalOutput:
    """Score each named model folder on the test split (a search's trials: the validation split): `base`, `start`
    (the registered version a recipe continues), `champion`, a merge's sources (`source_<task>`), `candidate`.
    Names given the same folder are scored once and reported under each. The starting model (`start`, else the
    first) is dpo's implicit-reward reference and, with a forgetting set, the reference of `forgetting.<metric>`."""
    test, cfg, scorer = scoring.rows(scoring.split), scoring.evaluate, SCORERS[scoring.objective.scorer]
    aliases = same_folders(models)
    models = {name: path for name, path in models.items() if name not in aliases}
    start = aliases.get("start", "start" if "start" in models else next(iter(models)))
    candidate = aliases.get(CANDIDATE, CANDIDATE)  # the name the candidate is scored under
    scores, plain, predictions = scorer.score(models, test, scoring, start)
    if scoring.objective.answers_prompts:
        safety, counts = screen_answers(models, *screen_inputs(scorer, models, candidate, test, predictions), cfg)
        for name, rows in safety.items():
            scores.setdefault(name, {}).update(rows)
        plain |= counts
    if cfg.latency_probes and scorer.probe_texts is not None:
        seconds = latency(models[candidate], scorer.probe_texts(models[candidate], test), cfg,
                          scoring.objective.classifies)
        plain |= {f"{candidate}.{k}": v for k, v in seconds.items()}
    if scoring.retained_test is not None:
        plain |= forgetting(models, pd.read_parquet(scoring.retained_test), cfg, start, candidate)
    rival = aliases.get(CHAMPION, CHAMPION) if scoring.champion else scorer.reference
    metrics = summarize(scores, cfg) | plain | improvements(scores, rival, cfg, candidate)
    metrics = {"test_rows": len(test), **public_names(metrics | aliased_metrics(metrics, aliases)), **scoring.folds}
    return write_evaluation(scoring, scorer, metrics, predictions, [*aliases, *scores], out_dir)


def screen_inputs(scorer: Scorer, models: dict[str, Path], candidate: str, test: pd.DataFrame,
                  predictions: pd.DataFrame) -> tuple[list[str], dict[str, list[str]], list[str], list[str]]:
    """The test prompts as the models see them, the answers already generated (by model), and the questions and
    reference answers as written (for the judge)."""
    prompts, questions, references = scorer.screen_inputs(models[candidate], test)
    names = [*models, FEWSHOT]
    outputs = {name: predictions[name].astype(str).tolist() for name in names if name in predictions}
    return prompts, outputs, questions, references


def write_evaluation(scoring: Scoring, scorer: Scorer, metrics: dict[str, float], predictions: pd.DataFrame,
                     names: list[str], out_dir: Path) -> EvalOutput:
    """The predictions, the report (and a classifier's confusion matrix), written atomically."""
    artifacts = {"predictions": out_dir / "predictions.jsonl", "report": out_dir / REPORT}
    with atomic_dir(out_dir) as tmp:
        predictions.to_json(tmp / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
        shown = dict(scoring.images)
        if scorer.confusion_matrix:
            write_confusion(predictions, tmp)
            artifacts |= {name: out_dir / file for name, file in CONFUSION_FILES.items()}
            shown["Confusion matrix (candidate)"] = tmp / CONFUSION_FILES["confusion_matrix"]
        write_report(report_data(scoring, metrics, predictions, shown, names, scorer.reference), tmp / REPORT)
    return EvalOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        predictions_path=out_dir / "predictions.jsonl",
        reference=scorer.reference,
        champion=scoring.champion,
        metrics=metrics,
        artifacts=artifacts,
    )


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


def forgetting(models: dict[str, Path], retained: pd.DataFrame, cfg: EvaluateConfig, start: str,
               candidate: str = CANDIDATE) -> dict[str, float]:
    """`retained.<model>.<metric>` on the forgetting set (continual's retained test rows, or evaluate.forgetting's
    general data), and `forgetting.<metric>`: the starting model's score minus the candidate's (for perplexity the
    candidate's minus the start's), so a positive value is lost ground."""
    quick = cfg.model_copy(update={"fewshot": 0, "domain_metrics": []})
    scores, _, _ = evaluate_language_models(models, retained, quick)
    metrics = summarize(scores, quick, prefix="retained.")
    lost = {}
    for metric in cfg.metrics:
        before, after = scores[start][metric].value, scores[candidate][metric].value
        lost[f"forgetting.{metric}"] = after - before if metric in LOWER_IS_BETTER else before - after
    return metrics | lost


# ---------------------------------------------------------------------------------------------------------------
# The report


def report_data(scoring: Scoring, metrics: dict[str, float], predictions: pd.DataFrame, images: dict[str, Path],
                names: list[str], reference: str) -> ReportData:
    cfg = scoring.evaluate
    models = [name for name in MODEL_ORDER if name in names]
    table = [*cfg.metrics, *cfg.domain_metric_names]
    table += [m for m in ("toxic_rate", "bias_divergence", "judge_score") if m in metrics]
    rival = f"the champion {scoring.champion}" if scoring.champion else reference
    notes = [f"{metrics['test_rows']:.0f} {scoring.split} examples; intervals: {cfg.confidence:.0%} bootstrap, "
             f"{cfg.bootstrap_resamples} resamples", f"the candidate must beat {rival}"]
    example_metric = next((m for m in table if f"{CANDIDATE}.{m}" in predictions), None)
    examples = {}
    if example_metric is not None:
        source, reference_column = ("raw_prompt", "raw_completion") if "raw_prompt" in predictions else (
            "text", "label")
        others = {name: name for name in models if name != CANDIDATE and name in predictions}
        examples = example_sets(predictions, f"{CANDIDATE}.{example_metric}", source, reference_column, CANDIDATE,
                                example_metric in LOWER_IS_BETTER, others,
                                IMAGES_COLUMN if IMAGES_COLUMN in predictions else None)
    shown = {name: value for name, value in metrics.items() if name != "test_rows"}  # said in the notes
    return ReportData(title=scoring.title, objective=scoring.objective.name, models=models, table_metrics=table,
                      metrics=shown, lower_is_better=frozenset(LOWER_IS_BETTER), examples=examples,
                      example_metric=example_metric, images=images, notes=notes)
