"""Which fine-tuning method to use, from the memory budget and the amount of data, with the reasons as short lines.

The data-size thresholds are rules of thumb, documented with their reasons in docs/planning.md:
- fewer than FEW_SHOT_MAX_ROWS examples (pretrained base): put them in the prompt; training on so few overfits;
- fewer than PROMPT_MAX_ROWS: prompt tuning, whose few thousand parameters so few examples can still constrain;
- at least FULL_MIN_ROWS and full fine-tuning fits: full fine-tuning; below that, LoRA matches it on task data
  while training a fraction of the parameters, and forgets less of what the base knew;
- LoRA when its base fits in the budget, else QLoRA (the same adapters on a 4-bit base), else few-shot prompting.
A random (scratch) base knows nothing to prompt, so few-shot and prompt methods are left out for it; so are the
methods the objective or the model's architecture rules out (plan.py: few-shot for a classifier), and a data-size
rule whose methods are all left out gives way to the next.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ftcore.planning.estimate import ADAMW_8BIT_BYTES, Kind, Memory
from ftcore.planning.hardware import Hardware

FEW_SHOT_MAX_ROWS = 20
PROMPT_MAX_ROWS = 100
FULL_MIN_ROWS = 10_000
# The estimate is checked to within 30 % of measured peaks (tests/ftcore/test_planning.py): a plan that fits with
# this margin still fits when the estimate is 30 % short.
MARGIN = 1.3


@dataclass(frozen=True)
class MethodEstimate:
    label: str  # for people: "LoRA r=8 (all-linear)"
    kind: Kind
    trainable: int
    counted: str  # how the trainable parameters were counted
    memory: Memory
    flops: float | None  # None when the number of train rows is unknown
    planned_bytes: float  # the memory to plan for: see needs()
    fits: bool
    is_recipe: bool = False
    setting: str | None = None  # the `--set` that makes the recipe use this method (None: it does, or cannot)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "trainable_params": self.trainable,
                "counted": self.counted, "memory_bytes": self.memory.to_dict(), "train_flops": self.flops,
                "planned_bytes": self.planned_bytes, "fits": self.fits, "is_recipe": self.is_recipe,
                "setting": self.setting}


@dataclass(frozen=True)
class Variant:
    """A method with a setting that saves memory, and what it would then plan."""

    how: str  # "with train.gradient_checkpointing: true"
    planned_bytes: float
    setting: str | None  # the `--set` that applies it; None where the train stage has no such setting


@dataclass(frozen=True)
class Recommendation:
    method: str  # a key of the estimates, or "none" when nothing fits
    reasons: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)  # `--set` overrides the method needs to fit


def needs(memory: Memory, hardware: Hardware) -> float:
    """(peak + the activations a CPU process's heap keeps) x MARGIN + what the process holds besides tensors."""
    return (memory.peak + hardware.heap_retention * memory.activations) * MARGIN + hardware.overhead_bytes


def recommend(estimates: dict[str, MethodEstimate], rows: int | None, pretrained: bool, budget: float,
              variants: dict[str, list[Variant]] | None = None) -> Recommendation:
    """The first method in order of preference for this much data that fits, as it is or with a setting that
    saves memory (`variants`). `estimates` holds the methods on offer: full, lora, qlora, prompt and few_shot, less
    those the objective or the model rules out."""
    preference, reasons = _preference(rows, pretrained, estimates.keys())
    for method in preference:
        estimate = estimates[method]
        peak, planned = human_bytes(estimate.memory.peak), human_bytes(estimate.planned_bytes)
        sizes = f"{estimate.label}: peak {peak}, planned {planned}"
        switch = [estimate.setting] if estimate.setting else []
        if estimate.fits:
            reasons.append(f"{sizes}: fits in {human_bytes(budget)}")
            return Recommendation(method, reasons, switch)
        reasons.append(f"{sizes}: more than {human_bytes(budget)}")
        for variant in (variants or {}).get(method, []):
            if variant.planned_bytes <= budget:
                reasons.append(f"  {variant.how} it would plan {human_bytes(variant.planned_bytes)}: fits")
                if variant.setting:
                    return Recommendation(method, reasons, [*switch, variant.setting])
    reasons.append("nothing fits: use a smaller model, a shorter train.max_length or train.batch_size, or more "
                   "memory")
    return Recommendation("none", reasons)


def _preference(rows: int | None, pretrained: bool, offered: Collection[str]) -> tuple[list[str], list[str]]:
    """The methods to try among those `offered`, best first, for this much data, and why."""
    order, reasons = _preference_by_data(rows, pretrained, offered)
    preference = [method for method in order if method in offered]
    if not preference and "full" in offered:  # e.g. a vision-language model training its projector alone
        return ["full"], [*reasons, f"full fine-tuning: {', '.join(order)} left out"]
    return preference, reasons


def _preference_by_data(rows: int | None, pretrained: bool,
                        offered: Collection[str]) -> tuple[list[str], list[str]]:
    prompt_free = ["few_shot"] if pretrained else []
    if rows is None:
        return ["lora", "qlora", *prompt_free], ["train rows unknown: chosen by memory alone"]
    if pretrained and rows < FEW_SHOT_MAX_ROWS and "few_shot" in offered:
        return ["few_shot"], [f"{rows} train rows: few enough to put in the prompt; training on them would "
                              f"overfit"]
    if pretrained and rows < PROMPT_MAX_ROWS and "prompt" in offered:
        return ["prompt", "few_shot"], [f"{rows} train rows: prompt tuning, which trains only a few virtual "
                                        f"tokens, rather than adapters these few rows cannot constrain"]
    reasons = [] if pretrained else ["scratch base: few-shot and prompt methods need a pretrained model"]
    if not pretrained and rows < PROMPT_MAX_ROWS:
        reasons.append(f"{rows} train rows are very few to train a model from scratch on; a pretrained base "
                       f"would need fewer")
    if rows >= FULL_MIN_ROWS:
        reasons.append(f"{rows} train rows: enough data for full fine-tuning to pay off when it fits")
        return ["full", "lora", "qlora", *prompt_free], reasons
    reasons.append(f"{rows} train rows: LoRA rather than full fine-tuning: below {FULL_MIN_ROWS:,} rows adapters "
                   f"match it on task data, train far fewer weights and forget less of the base")
    return ["lora", "qlora", *prompt_free], reasons


def human_bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def human_count(n: float) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f}"


def adamw_8bit_needs(full: MethodEstimate, hardware: Hardware) -> float:
    """Full fine-tuning's plan with 8-bit optimizer states instead of AdamW's two in the weights' dtype."""
    memory = full.memory
    eight_bit = Memory(memory.weights, memory.gradients, full.trainable * ADAMW_8BIT_BYTES, memory.activations)
    return needs(eight_bit, hardware)
