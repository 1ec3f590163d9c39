"""One monitor pass: a window of logged requests, the canaries' answers and the training inputs in, every metric and
each objective's outcome out (`Assessment`).

Metric names (MLflow, summary.json, the Prefect event): `requests`, `latency_p50_s`, `latency_p95_s`,
`latency_p99_s`, `error_rate`, `client_error_rate`, `toxic_rate`, `canary_accuracy`, `drift_score` (with its views
`drift.length`, `drift.vocabulary`, `drift.embedding`, and for images `drift.image_width`, `drift.image_height`,
`drift.image_brightness`), and the counts behind them (`outputs_screened`, `inputs_compared`, `images_compared`,
`canaries`, `disconnects`: requests whose client left before the answer, in no error rate).
`breaches` lists the breached objectives' metric names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ftcore.monitor.canaries import CanaryResult, canary_accuracy
from ftcore.monitor.config import MonitorConfig
from ftcore.monitor.drift import Drift, measure_drift
from ftcore.monitor.objectives import Check, breaches, check_objectives, not_measured
from ftcore.monitor.toxicity import toxic_flags
from ftcore.monitor.window import answered_outputs, logged_images, logged_inputs, traffic_metrics
from ftcore.safety.config import ToxicityScreenConfig

TOXIC_EXAMPLES = 5  # flagged outputs quoted in the report


@dataclass
class Assessment:
    model: str
    version: str
    window: str  # what traffic was assessed, in words
    rows: pd.DataFrame  # the window's requests (RequestLog.read's columns)
    metrics: dict[str, float]
    checks: list[Check]
    drift: Drift
    canaries: list[CanaryResult]
    live_inputs: list[str]
    reference_inputs: list[str]
    toxic_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    live_images: list[dict] = field(default_factory=list)  # image_stats of the logged chats' images
    reference_images: list[dict] = field(default_factory=list)  # and of the training split's

    @property
    def breaches(self) -> list[str]:
        return breaches(self.checks)

    @property
    def not_measured(self) -> list[str]:
        return not_measured(self.checks)

    @property
    def title(self) -> str:
        return f"Monitor report: {self.model} v{self.version}"


def assess(model: str, version: str, window: str, rows: pd.DataFrame, reference_inputs: list[str],
           canaries: list[CanaryResult] | None, cfg: MonitorConfig, toxicity: ToxicityScreenConfig | None,
           unmeasured: dict[str, str] | None = None, reference_images: list[dict] | None = None) -> Assessment:
    """Every metric of the window and each objective's outcome. `canaries` None: they were not asked.
    `unmeasured`: the caller's reasons for what it could not provide (metric -> why), shown with the objective.
    `reference_images`: `image_stats` of the training images, for a vision-language model."""
    metrics = traffic_metrics(rows)
    unmeasured = {"latency_p95_s": "no requests in the window", "error_rate": "no request answered in the window",
                  "canary_accuracy": "no monitor.canaries in the recipe", **(unmeasured or {})}
    toxic_examples = _screen_outputs(answered_outputs(rows), toxicity, metrics, unmeasured)
    if canaries is not None:
        metrics["canaries"] = float(len(canaries))
        if (accuracy := canary_accuracy(canaries)) is not None:
            metrics["canary_accuracy"] = accuracy
    live, live_images = logged_inputs(rows), logged_images(rows)
    drift = measure_drift(live, reference_inputs, cfg.drift, live_images, reference_images)
    metrics["inputs_compared"] = float(len(live))
    if live_images:
        metrics["images_compared"] = float(len(live_images))
    if drift.score is None:
        unmeasured.setdefault("drift_score", drift.note or "not measured")
    else:
        metrics["drift_score"] = drift.score
        metrics |= {f"drift.{part}": value for part, value in drift.parts.items()}
    return Assessment(model=model, version=version, window=window, rows=rows, metrics=metrics,
                      checks=check_objectives(metrics, cfg.objectives, unmeasured), drift=drift,
                      canaries=canaries or [], live_inputs=live, reference_inputs=reference_inputs,
                      toxic_examples=toxic_examples, live_images=live_images,
                      reference_images=reference_images or [])


def _screen_outputs(outputs: list[str], toxicity: ToxicityScreenConfig | None, metrics: dict[str, float],
                    unmeasured: dict[str, str]) -> list[str]:
    """Adds `toxic_rate` and `outputs_screened` to `metrics` (or the reason to `unmeasured`); returns a few flagged
    outputs for the report."""
    if toxicity is None:
        unmeasured["toxic_rate"] = "evaluate.safety.toxicity is off in the recipe"
        return []
    if not outputs:
        unmeasured["toxic_rate"] = "no generated text logged in the window (see serve request_log.sample_rate)"
        return []
    flags = toxic_flags(outputs, toxicity)
    metrics["toxic_rate"], metrics["outputs_screened"] = float(np.mean(flags)), float(len(outputs))
    return [output for output, flag in zip(outputs, flags, strict=True) if flag][:TOXIC_EXAMPLES]
