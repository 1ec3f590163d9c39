"""The recipe's `evaluate` and `deploy` sections: what the evaluate stage measures (metrics, baselines, forgetting,
safety, cross-validation) and the gate rules that decide whether the candidate becomes champion.

Split from ftcore/config.py, which re-exports these classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from ftcore.data.sources.config import (
    MAX_WAIT_S,
    Fraction,
    PluginSpec,
    Strict,
    check_http_url_secrets,
    existing_relative,
    resolve_relative,
)

Metric = Literal["exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "perplexity", "accuracy",
                 "macro_f1", "reward_accuracy", "mean_reward"]
GENERATION = ("exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "bleu", "chrf")
LOWER_IS_BETTER = {"perplexity"}
# The metrics each task can be evaluated with; the first is the default gate metric.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sft": (*GENERATION, "perplexity"),
    "multitask": (*GENERATION, "perplexity"),
    "dapt": ("perplexity",),
    "classification": ("macro_f1", "accuracy"),
    "dpo": ("reward_accuracy", "perplexity"),
    "reward_model": ("reward_accuracy",),
    "rl": ("mean_reward",),
}
# Tasks whose models answer prompts: few-shot prompting, domain metrics, the toxicity screen and the bias probe
# apply to their generated answers.
ANSWERING_TASKS = ("sft", "multitask", "rl", "dpo")


class DomainMetricSpec(PluginSpec):
    """A registered domain metric (`ftflow metrics` lists them) with its parameters, scored on generated answers."""

    metric: str

    def params_model(self) -> type[BaseModel]:
        from ftcore.evaluation.domain import get_domain_metric  # imported here: it loads the registered metrics

        return get_domain_metric(self.metric).params


class ForgettingConfig(Strict):
    """A general held-out set scored for base, champion and candidate: what the fine-tuning may have cost."""

    data: Path = Field(description=".jsonl or .parquet rows in the recipe's data format (columns after the "
                                   "recipe's column mapping), e.g. a slice of the Alpaca sample")
    max_rows: int = Field(200, ge=1, description="rows scored (the first ones)")

    @field_validator("data")
    @classmethod
    def _relative_to_recipe(cls, v: Path, info: ValidationInfo) -> Path:
        return resolve_relative(v, info)


class ToxicityScreenConfig(Strict):
    scorer: str = Field("lexicon", description="a registered toxicity scorer: lexicon, classifier (model_path: a "
                                               "local classifier folder), guard (model_path: a Llama Guard-style "
                                               "model folder), or a data engineer's")
    model_path: str | None = None
    toxic_label: str | int | None = None
    threshold: Fraction = Field(0.5, description="an output scoring at least this is toxic")


class BiasProbeConfig(Strict):
    swaps: list[tuple[str, str]] | None = Field(None, description="counterfactual term pairs; default: gendered "
                                                                  "terms (ftcore/safety/bias.py)")
    prompts: Path | None = Field(None, description="a text file of extra probe prompts, one per line, written as "
                                                   "the model sees prompts; the test prompts are probed too")
    max_pairs: int = Field(32, ge=1)

    @field_validator("prompts")
    @classmethod
    def _relative_to_recipe(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return existing_relative(v, info, "a text file of probe prompts, one per line")


class JudgeConfig(Strict):
    """An LLM judge behind any OpenAI-compatible API, scoring the candidate's answers 1-10 (off unless set)."""

    url: str = Field(description="the API base, e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key_env: str | None = Field(None, description="the environment variable holding the API key (never the "
                                                      "key itself)")
    max_examples: int = Field(50, ge=1)
    timeout_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)
    rubric: str | None = Field(None, description="the judge's instructions; default: rate correctness 1-10")

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        check_http_url_secrets(url)  # the key comes from api_key_env
        return url


class SafetyConfig(Strict):
    toxicity: ToxicityScreenConfig | None = ToxicityScreenConfig()
    bias: BiasProbeConfig | None = BiasProbeConfig()
    judge: JudgeConfig | None = None


class EvaluateConfig(Strict):
    # A recipe's default is every metric of its task (Recipe._task_defaults); sft's on its own.
    metrics: list[Metric] = Field(default_factory=lambda: list(TASK_METRICS["sft"]), min_length=1,
                                  description="default: every metric of the task")
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


# ---------------------------------------------------------------------------------------------------------------
# The gate


class BeatChampion(Strict):
    """The candidate beats the champion (before the first champion: the task's reference, e.g. the base model) on
    `metric` by more than `margin`, and with `confident`, the lower bound of the paired bootstrap interval of the
    improvement is above `margin` too."""

    rule: Literal["beat_champion"] = "beat_champion"
    metric: str | None = Field(None, description="default: the task's first metric")
    margin: float = Field(0.0, ge=0)
    confident: bool = Field(True, description="require the improvement's lower confidence bound above the margin")


class MaxToxicity(Strict):
    """The candidate's toxic-output rate on the test prompts is at most `max`."""

    rule: Literal["max_toxicity"] = "max_toxicity"
    max: Fraction = 0.0


class MaxForgetting(Strict):
    """What the candidate lost on the forgetting set (forgetting.<metric>) is at most `max`."""

    rule: Literal["max_forgetting"] = "max_forgetting"
    metric: str = "perplexity"
    max: float


class MaxLatency(Strict):
    """The candidate answers one request within `max_s` seconds (95th percentile on this machine)."""

    rule: Literal["max_latency"] = "max_latency"
    max_s: float = Field(2.0, gt=0)


class MaxBias(Strict):
    """The candidate's answers to counterfactual prompt pairs diverge by at most `max` (bias_divergence)."""

    rule: Literal["max_bias"] = "max_bias"
    max: Fraction


GateRule = Annotated[BeatChampion | MaxToxicity | MaxForgetting | MaxLatency | MaxBias, Field(discriminator="rule")]

# What the deploy stage can export for a new version (docs/deploy.md): the adapter alone, the merged model in float32
# or bfloat16, and 8-bit weights for CPU inference.
ExportKind = Literal["adapter", "merged", "merged_bf16", "int8"]


class DeployConfig(Strict):
    registered_model: str | None = Field(None, description="defaults to the recipe name")
    gate: list[GateRule] = Field(default_factory=lambda: [BeatChampion()], min_length=1,
                                 description="every rule must pass for the candidate to become champion")
    # int8 by default: every method can give it, and it is the export whose size and test score need checking.
    exports: list[ExportKind] = Field(default_factory=lambda: ["int8"],
                                      description="what is exported for the new version, as MLflow models of its run "
                                                  "(exports/<kind>): adapter, merged, merged_bf16, int8 ([] for none)")
    int8_tolerance: float = Field(0.05, ge=0, description="the most the int8 export may lose against the float32 "
                                                          "model on the test split's primary metric: absolute for "
                                                          "exact_match and accuracy, relative for perplexity")

    @field_validator("exports")
    @classmethod
    def _each_kind_once(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"exports: each kind once, got {kinds}")
        return kinds

    @field_validator("gate")
    @classmethod
    def _one_primary_rule(cls, rules: list) -> list:
        primary = [r for r in rules if isinstance(r, BeatChampion)]
        if len(primary) != 1:
            raise ValueError("gate: needs exactly one beat_champion rule (the metric a new version must improve), "
                             f"found {len(primary)}")
        return rules

    @property
    def primary(self) -> BeatChampion:
        return next(r for r in self.gate if isinstance(r, BeatChampion))
