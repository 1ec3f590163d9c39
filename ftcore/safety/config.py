"""The recipe's `evaluate.safety` section: toxicity screening, bias probes and a judge model."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from ftcore.schema import MAX_WAIT_S, Fraction, Strict, check_http_url_secrets, existing_relative


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
