"""`ftflow compare A B`: the metric differences between two registered versions, from the evaluate metrics of the
run that registered each (the candidate's own test metrics and what it forgot; the baselines it was scored beside
and the interval bounds are left out)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftcore import versions
from ftcore.errors import UserError
from ftcore.evaluation.config import LOWER_IS_BETTER
from ftcore.models.registered import pin_registered
from ftcore.stages import Stage

# The evaluate stage's metrics of the models it scores beside the candidate (and the candidate's gain over them).
BASELINE_PREFIXES = ("base.", "fewshot.", "start.", "champion.", "tfidf.", "length.", "retained.", "improvement.")
# NAME/VERSION or NAME@ALIAS, optionally as a models:/ URI.
VERSION_REF = re.compile(r"^(?:models:/)?(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


@dataclass(frozen=True)
class MetricDiff:
    metric: str
    a: float | None
    b: float | None

    @property
    def change(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def better(self) -> str:
        """Which version the metric favours: "a", "b" or "" (equal, or missing on one side, or not a score)."""
        if self.change is None or self.change == 0 or self.metric.endswith((".ci_low", ".ci_high")):
            return ""
        lower = self.metric.split(".")[0] in LOWER_IS_BETTER or self.metric.startswith("forgetting.")
        return "b" if (self.change < 0) == lower else "a"


def version_metrics(ref: str) -> tuple[str, dict[str, float]]:
    """(NAME/VERSION, its own metrics) for `ref`."""
    match = VERSION_REF.match(ref)
    if not match:
        raise UserError(f"{ref!r}: name a registered version as NAME/VERSION or NAME@ALIAS "
                        "(e.g. clinical-qa/3, clinical-qa@champion)")
    pinned = pin_registered(match["name"], match["alias"], match["version"], ref)
    metrics = versions.version_stage_metrics(str(pinned.name), str(pinned.version), Stage.evaluate)
    return pinned.label, {k: v for k, v in metrics.items()
                          if not k.startswith(BASELINE_PREFIXES) and not k.endswith((".ci_low", ".ci_high"))}


def compare_versions(a: str, b: str) -> tuple[str, str, list[MetricDiff]]:
    label_a, metrics_a = version_metrics(a)
    label_b, metrics_b = version_metrics(b)
    names = sorted(metrics_a.keys() | metrics_b.keys())
    return label_a, label_b, [MetricDiff(n, metrics_a.get(n), metrics_b.get(n)) for n in names]
