"""Measured values against the objectives (`monitor.objectives`): each objective is met, breached or not measured.
An objective without a value (no requests in the window, no sampled outputs, no canaries) is never counted as
met: it is reported as not measured, with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftcore.monitor.config import Objectives

MET, BREACHED, NOT_MEASURED = "met", "breached", "not measured"
Status = Literal["met", "breached", "not measured"]


@dataclass(frozen=True)
class Check:
    """One objective: the metric it reads, its limit, whether it is a maximum or a minimum, and the outcome."""

    metric: str
    label: str
    limit: float
    upper: bool  # True: the value must not exceed the limit; False: it must not fall below it
    value: float | None
    reason: str | None = None  # why it was not measured

    @property
    def status(self) -> Status:
        if self.value is None:
            return NOT_MEASURED
        past = self.value > self.limit if self.upper else self.value < self.limit
        return BREACHED if past else MET

    @property
    def objective(self) -> str:
        return f"{'≤' if self.upper else '≥'} {self.limit:g}"


# metric -> (label, objectives field, upper limit?)
OBJECTIVES = {
    "latency_p95_s": ("latency p95 (s)", "max_latency_p95_s", True),
    "error_rate": ("error rate (5xx)", "max_error_rate", True),
    "toxic_rate": ("toxic outputs", "max_toxic_rate", True),
    "canary_accuracy": ("canary accuracy", "min_canary_accuracy", False),
    "drift_score": ("input drift", "max_drift_score", True),
}


def check_objectives(metrics: dict[str, float], objectives: Objectives,
                     unmeasured: dict[str, str]) -> list[Check]:
    """One check per objective, in OBJECTIVES' order; `unmeasured` gives the reason for a metric without a value."""
    checks = []
    for metric, (label, field, upper) in OBJECTIVES.items():
        value = metrics.get(metric)
        reason = None if value is not None else unmeasured.get(metric, "no data in the window")
        checks.append(Check(metric, label, getattr(objectives, field), upper, value, reason))
    return checks


def breaches(checks: list[Check]) -> list[str]:
    """The metric names of the breached objectives, e.g. ["latency_p95_s", "toxic_rate"]."""
    return [c.metric for c in checks if c.status == BREACHED]


def not_measured(checks: list[Check]) -> list[str]:
    return [c.metric for c in checks if c.status == NOT_MEASURED]
