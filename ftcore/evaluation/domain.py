"""Domain metrics: `@domain_metric` registers `fn(outputs, references, prompts, params)` returning one score in
[0, 1] per example (higher is better; the metric is their mean), configured in a recipe as
`evaluate: {domain_metrics: [{metric: NAME, ...params}]}`.

Like cleaning steps and reward functions, domain metrics live in a registry of ftcore/plugins.py (`METRICS`), filled
from any installed package's `ftflow.metrics` entry point (ftflow's own `data_recipes.metrics` is one), so a data
engineer adds one by writing one decorated function. The evaluate stage scores them for every model that answers
the test prompts, with bootstrap intervals, and a gate rule may use one (`beat_champion` with `metric: NAME`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import ConfigDict

from ftcore.plugins import Plugin, Registry
from ftcore.schema import RecipeModel


class MetricParams(RecipeModel):
    """Base class of a domain metric's parameters; unknown keys in the recipe are errors."""

    model_config = ConfigDict(extra="forbid")


MetricFn = Callable[[list[str], list[str], list[str], MetricParams], Sequence[float]]


@dataclass(frozen=True)
class RegisteredMetric(Plugin):
    fn: MetricFn
    params: type[MetricParams] = MetricParams


# No built-ins: ftcore's own metrics are evaluate.metrics (ftcore/evaluation/config.py), which a domain metric's name
# may not shadow (DomainMetricSpec checks).
METRICS: Registry[RegisteredMetric] = Registry("domain metric", RegisteredMetric, group="ftflow.metrics")


def domain_metric(name: str, params: type[MetricParams] = MetricParams) -> Callable[[MetricFn], MetricFn]:
    """Register `fn(outputs, references, prompts, params) -> scores in [0, 1]` under `name`, used in a recipe as
    `evaluate: {domain_metrics: [{metric: name, ...params}]}`."""
    return METRICS.register(name, params=params)


def domain_scores(name: str, params: dict, outputs: list[str], references: list[str],
                  prompts: list[str]) -> np.ndarray:
    """One metric's per-example scores, checked: the wrong number of scores, or one outside [0, 1], is a bug in
    that metric, reported by name."""
    registered = METRICS.get(name)
    scores = [float(s) for s in registered.fn(outputs, references, prompts, registered.params(**params))]
    if len(scores) != len(outputs):
        raise ValueError(f"domain metric {name!r} returned {len(scores)} scores for {len(outputs)} answers")
    if any(math.isnan(s) or not 0.0 <= s <= 1.0 for s in scores):
        raise ValueError(f"domain metric {name!r} returned a score outside [0, 1]")
    return np.array(scores)
