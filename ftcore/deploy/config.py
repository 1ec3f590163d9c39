"""The recipe's `deploy` section: the gate rules a candidate must pass to become champion, and the exports."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator

from ftcore.schema import Fraction, Strict


class BeatChampion(Strict):
    """The candidate beats the champion (before the first champion: the objective's reference, e.g. the base model) on
    `metric` by more than `margin`, and with `confident`, the lower bound of the paired bootstrap interval of the
    improvement is above `margin` too."""

    rule: Literal["beat_champion"] = "beat_champion"
    metric: str | None = Field(None, description="default: the objective's first metric")
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


class KeepSources(Strict):
    """A merge: on each source's own test rows, the candidate keeps at least `share` of that source's score on
    `metric` (of a lower-is-better metric such as perplexity: at most the source's divided by `share`)."""

    rule: Literal["keep_sources"] = "keep_sources"
    metric: str | None = Field(None, description="default: the beat_champion rule's metric")
    share: float = Field(0.9, gt=0, le=1)


GateRule = Annotated[BeatChampion | MaxToxicity | MaxForgetting | MaxLatency | MaxBias | KeepSources,
                     Field(discriminator="rule")]


# What the deploy stage can export for a new version (docs/deploy.md): the adapter alone, the merged model in float32
# or bfloat16, 8-bit weights for CPU inference, GGUF files for llama.cpp and Ollama (gguf_<file type>), and an ONNX
# graph for ONNX Runtime.
ExportKind = Literal["adapter", "base", "merged", "merged_bf16", "int8", "gguf_f16", "gguf_q8_0", "gguf_q4_0", "onnx"]


class DeployConfig(Strict):
    registered_model: str | None = Field(None, description="defaults to the recipe name")
    gate: list[GateRule] = Field(default_factory=lambda: [BeatChampion()], min_length=1,
                                 description="every rule must pass for the candidate to become champion")
    # int8 by default: every method can give it, and it is the export whose size and test score need checking.
    exports: list[ExportKind] = Field(default_factory=lambda: ["int8"],
                                      description="what is exported for the new version, as MLflow models of its run "
                                                  "(exports/<kind>): adapter, base, merged, merged_bf16, int8, "
                                                  "gguf_f16, gguf_q8_0, gguf_q4_0, onnx ([] for none)")
    export_tolerance: float = Field(
        0.05, ge=0, validation_alias=AliasChoices("export_tolerance", "int8_tolerance"),  # its name until 0.1.0
        description="the most a quantised export (int8, gguf_q8_0, gguf_q4_0) may lose against the float32 model on "
                    "the test split's primary metric: absolute for exact_match and accuracy, relative for perplexity")

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
