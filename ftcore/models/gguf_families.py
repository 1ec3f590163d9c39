"""Which model families ftflow writes as GGUF (ftcore/deploy/gguf.py), known from a config alone: in ftcore.models so
that the recipe checks (ftcore/models/support.py) refuse a GGUF export before training without importing the
deploy package."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    arch: str  # llama.cpp's architecture (gguf.MODEL_ARCH_NAMES)
    rotary_permuted: bool  # LLaMA-style rotary halves, which llama.cpp stores interleaved


# model_type -> how llama.cpp runs it. Mistral runs as llama, as llama.cpp's converter writes it.
FAMILIES = {"llama": Family("llama", True), "mistral": Family("llama", True), "qwen2": Family("qwen2", False),
            "qwen3": Family("qwen3", False)}


def family_refusal(model_type: str, causal_lm: bool) -> str | None:
    """Why a model of this type cannot be written as GGUF here, in one line; None when it can. Known from a config
    alone, so a recipe is refused before it trains."""
    if model_type not in FAMILIES:
        return (f"model type {model_type!r} has no GGUF tensor mapping here (written: "
                f"{', '.join(sorted(FAMILIES))}); export merged or merged_bf16 and convert it with llama.cpp's "
                "convert_hf_to_gguf.py")
    if not causal_lm:
        return "only causal language models run in llama.cpp; a classifier's GGUF would have no head to load"
    return None
