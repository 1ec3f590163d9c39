"""The recipe's `evaluate` section: what the evaluate stage measures (metrics, baselines, forgetting,
cross-validation; its `safety` subsection lives in ftcore/safety/config.py). The gate that reads these
measurements: ftcore/deploy/config.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from ftcore.evaluation.domain import METRICS
from ftcore.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
from ftcore.safety.config import SafetyConfig
from ftcore.schema import PluginSpec, Strict, resolve_relative

Metric = Literal["exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "perplexity", "accuracy",
                 "macro_f1", "reward_accuracy", "mean_reward", "cer", "wer", "cer_normalized", "wer_normalized",
                 "cider"]
LOWER_IS_BETTER = {"perplexity", "cer", "wer", "cer_normalized", "wer_normalized"}


class DomainMetricSpec(PluginSpec):
    """A registered domain metric (`ftflow metrics` lists them) with its parameters, scored on generated answers."""

    metric: str

    def params_model(self) -> type[BaseModel]:
        if self.metric in get_args(Metric):
            raise KeyError(f"{self.metric!r} is a built-in metric: list it under evaluate.metrics")
        return METRICS.get(self.metric).params


class ForgettingConfig(Strict):
    """A general held-out set scored for base, champion and candidate: what the fine-tuning may have cost."""

    data: Path = Field(description=".jsonl or .parquet rows in the recipe's data format (columns after the "
                                   "recipe's column mapping), e.g. a slice of the Alpaca sample")
    max_rows: int = Field(200, ge=1, description="rows scored (the first ones)")

    @field_validator("data")
    @classmethod
    def _relative_to_recipe(cls, v: Path, info: ValidationInfo) -> Path:
        return resolve_relative(v, info)


class EvaluateConfig(Strict):
    # A recipe's default is every metric of its objective (recipe.py: with_default_metrics); sft's on its own.
    metrics: list[Metric] = Field(default_factory=lambda: list(OBJECTIVES[DEFAULT_OBJECTIVE].metrics), min_length=1,
                                  description="default: every metric of the objective")
    domain_metrics: list[DomainMetricSpec] = Field(default_factory=list, description="registered domain metrics "
                                                                                     "(`ftflow metrics`)")
    fewshot: int = Field(0, ge=0, le=32, description="k > 0: also score the base model prompted with k training "
                                                     "examples (fewshot.<metric>)")
    forgetting: ForgettingConfig | None = None
    safety: SafetyConfig = SafetyConfig()
    latency_probes: int = Field(8, ge=0, description="test prompts answered one at a time to time the candidate "
                                                     "(latency_p50_s, latency_p95_s)")
    cross_validation: int = Field(0, ge=0, description="k >= 2: also train and score k folds of the train split "
                                                      "(cv.<metric>.mean, cv.<metric>.std)")
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    bootstrap_resamples: int = Field(1000, ge=0, description="resamples of the test examples for each metric's "
                                                              "confidence interval (0: no intervals)")
    confidence: float = Field(0.95, gt=0, lt=1, description="coverage of the intervals (<metric>.ci_low/ci_high)")

    @field_validator("cross_validation")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("cross_validation: k folds need k >= 2 (0 turns it off)")
        return v

    @property
    def domain_metric_names(self) -> list[str]:
        return [spec.metric for spec in self.domain_metrics]
