"""Per-example scores of every evaluated model, and the metrics, intervals and improvements computed from them.

Every objective's scorer returns, per model and metric, one row of statistics per test example and the function that
turns any subset of rows into the metric (`Rows`). Everything with an uncertainty is computed here, the same way
for every objective: the metric, its bootstrap interval, and the paired interval of the candidate's improvement over
the reference it must beat.

Inside the evaluate stage a metric is keyed `<model>.<metric>`; `public_names` gives the names other tools rely on:
the candidate's metrics bare (`exact_match`, `exact_match.ci_low`), the other models' prefixed (`base.exact_match`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ftcore.evaluation.bootstrap import bootstrap_interval, paired_interval
from ftcore.evaluation.config import LOWER_IS_BETTER, EvaluateConfig

CANDIDATE = "candidate"
FEWSHOT = "fewshot"
# Prefixes of metrics computed on another set than the test split; the candidate's are named `<prefix>.<metric>`.
SET_PREFIXES = ("retained",)


def mean_of(rows: np.ndarray) -> float:
    return float(np.nanmean(rows)) if len(rows) else float("nan")


@dataclass(frozen=True)
class Rows:
    values: np.ndarray
    aggregate: Callable[[np.ndarray], float] = field(default=mean_of)

    @property
    def value(self) -> float:
        return self.aggregate(self.values)


ModelScores = dict[str, dict[str, Rows]]  # model -> metric -> rows


def summarize(scores: ModelScores, cfg: EvaluateConfig, prefix: str = "") -> dict[str, float]:
    """`<prefix><model>.<metric>` for every model and metric, with `.ci_low`/`.ci_high` when intervals are on."""
    metrics = {}
    for model, by_metric in scores.items():
        for metric, rows in by_metric.items():
            key = f"{prefix}{model}.{metric}"
            metrics[key] = rows.value
            if cfg.bootstrap_resamples:
                metrics[f"{key}.ci_low"], metrics[f"{key}.ci_high"] = bootstrap_interval(
                    rows.values, rows.aggregate, cfg.bootstrap_resamples, cfg.confidence)
    return metrics


def improvements(scores: ModelScores, reference: str, cfg: EvaluateConfig,
                 candidate_name: str = CANDIDATE) -> dict[str, float]:
    """`improvement.<metric>`: how much better the candidate (scored as `candidate_name`) is than `reference` on each
    of the recipe's metrics both have (for perplexity, the reference's minus the candidate's), with the paired
    interval (`.ci_low`/`.ci_high`)."""
    candidate, other = scores.get(candidate_name, {}), scores.get(reference, {})
    metrics = {}
    wanted = [*cfg.metrics, *cfg.domain_metric_names]
    for metric in [m for m in wanted if m in candidate and m in other]:
        ours, theirs = candidate[metric], other[metric]
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        metrics[f"improvement.{metric}"] = sign * (ours.value - theirs.value)
        if cfg.bootstrap_resamples:
            low, high = paired_interval(ours.values, theirs.values, ours.aggregate, cfg.bootstrap_resamples,
                                        cfg.confidence)
            low, high = sorted((sign * low, sign * high))
            metrics[f"improvement.{metric}.ci_low"], metrics[f"improvement.{metric}.ci_high"] = low, high
    return metrics


def public_names(metrics: dict[str, float]) -> dict[str, float]:
    """The candidate's metrics without the model name: `candidate.x` -> `x`, `retained.candidate.x` ->
    `retained.x`; every other key as it is."""
    head = f"{CANDIDATE}."
    renamed = {}
    for key, value in metrics.items():
        for prefix in ("", *(f"{p}." for p in SET_PREFIXES)):
            if key.startswith(prefix + head):
                key = prefix + key[len(prefix + head):]
                break
        renamed[key] = value
    return renamed


def source_name(task: str) -> str:
    """The name a merge's source is scored under: its metrics are `source_<task>.<metric>` overall and
    `source_<task>.<metric>.<task>` on its own test rows (the figure the gate's keep_sources rule reads)."""
    return f"{SOURCE_PREFIX}{task}"


SOURCE_PREFIX = "source_"


def metric_key(model: str, metric: str) -> str:
    """The public key of a model's metric."""
    return metric if model == CANDIDATE else f"{model}.{metric}"
