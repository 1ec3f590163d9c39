"""The domain-metric registry: `@domain_metric` registers `fn(outputs, references, prompts, params)` returning one
score in [0, 1] per example (higher is better; the metric is their mean), configured in a recipe as
`evaluate: {domain_metrics: [{metric: NAME, ...params}]}`.

Like cleaning steps and reward functions, domain metrics come from any installed package's `ftflow.metrics` entry
point (ftflow's own `data_recipes.metrics` is one), so a data engineer adds one by writing one decorated function.
The evaluate stage scores them for every model that answers the test prompts, with bootstrap intervals, and a gate
rule may use one (`beat_champion` with `metric: NAME`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import ConfigDict

from ftcore.data.sources.config import RecipeModel
from ftcore.registry import load_plugins, lookup

ENTRY_POINT_GROUP = "ftflow.metrics"


class MetricParams(RecipeModel):
    """Base class of a domain metric's parameters; unknown keys in the recipe are errors."""

    model_config = ConfigDict(extra="forbid")


MetricFn = Callable[[list[str], list[str], list[str], MetricParams], Sequence[float]]


@dataclass(frozen=True)
class RegisteredMetric:
    name: str
    fn: MetricFn
    params: type[MetricParams]
    module: str

    @property
    def doc(self) -> str:
        return next(iter((self.fn.__doc__ or "").strip().splitlines()), "")


_METRICS: dict[str, RegisteredMetric] = {}
_discovered = False


def domain_metric(name: str, params: type[MetricParams] = MetricParams) -> Callable[[MetricFn], MetricFn]:
    def register(fn: MetricFn) -> MetricFn:
        existing = _METRICS.get(name)
        if existing and existing.module != fn.__module__:
            raise ValueError(f"domain metric {name!r} is registered twice: {existing.module} and {fn.__module__}")
        _METRICS[name] = RegisteredMetric(name=name, fn=fn, params=params, module=fn.__module__)
        return fn

    return register


def discover_metrics() -> dict[str, RegisteredMetric]:
    """Every `ftflow.metrics` entry point's metrics, loaded once."""
    global _discovered
    if not _discovered:
        load_plugins(ENTRY_POINT_GROUP)
        _discovered = True
    return dict(_METRICS)


def get_domain_metric(name: str) -> RegisteredMetric:
    from ftcore.evaluate_config import TASK_METRICS

    if any(name in metrics for metrics in TASK_METRICS.values()):
        raise KeyError(f"{name!r} is a built-in metric: list it under evaluate.metrics")
    return lookup("domain metric", name, discover_metrics())


def domain_scores(name: str, params: dict, outputs: list[str], references: list[str],
                  prompts: list[str]) -> np.ndarray:
    """One metric's per-example scores, checked: the wrong number of scores, or one outside [0, 1], is a bug in
    that metric, reported by name."""
    registered = get_domain_metric(name)
    scores = [float(s) for s in registered.fn(outputs, references, prompts, registered.params(**params))]
    if len(scores) != len(outputs):
        raise ValueError(f"domain metric {name!r} returned {len(scores)} scores for {len(outputs)} answers")
    if any(math.isnan(s) or not 0.0 <= s <= 1.0 for s in scores):
        raise ValueError(f"domain metric {name!r} returned a score outside [0, 1]")
    return np.array(scores)
