"""`ftflow plan`: parameters, memory and compute of a recipe's model under each fine-tuning method on this
machine, and the method to use.

The model is the one init builds for the recipe's objective: a causal LM, a vision-language model, or a classifier
with one output per class of the train split. The recipe's own method and the alternatives (full, LoRA, QLoRA,
prompt tuning, few-shot; those the objective and the model's architecture allow, with the recipe's LoRA rank and
targets where it has them) are counted by the pipeline's `apply_method` on a meta model; on a vision-language model,
on the parts train.vision trains.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ftcore.errors import UserError
from ftcore.models.config import FullMethod, LoraMethod, ModelConfig, PromptMethod, VisionParts
from ftcore.objectives import DEFAULT_OBJECTIVE, objectives_where
from ftcore.planning.advisor import (
    FEW_SHOT_MAX_ROWS,
    MethodEstimate,
    Recommendation,
    Variant,
    adamw_8bit_needs,
    human_bytes,
    human_count,
    needs,
    recommend,
)
from ftcore.planning.data import DataStats, data_stats
from ftcore.planning.estimate import (
    GradientsReach,
    Kind,
    Setup,
    per_process,
    quantized_base_bytes,
    training_flops,
    training_memory,
    vision_flops,
)
from ftcore.planning.hardware import Hardware, detect_hardware
from ftcore.planning.shape import DTYPE_BYTES, ModelShape, build_meta_model, method_trainable, model_shape
from ftcore.recipe import Recipe
from ftcore.training.config import DistributedConfig, TrainConfig

DEFAULT_LORA_R = 8
# Lester et al. (2021) tune 20-100 virtual tokens; 20 is also PEFT's documented example.
PROMPT_VIRTUAL_TOKENS = 20
# Methods with a LoRA rank and targets (the alternatives copy them).
LORA_NAMES = ("lora", "dora", "qlora")
# The alternatives that train, as the support rules name them (few-shot prompting trains nothing).
ALTERNATIVES = ("full", "lora", "qlora", "prompt")
ADAPTERS = ("lora", "qlora")  # the alternatives that put an adapter on linear layers
# Recipe methods that are not trained like adapters on a full-precision base.
KINDS: dict[str, Kind] = {"full": "full", "qlora": "qlora", "prompt": "prompt", "prefix": "prompt",
                          "p_tuning": "prompt"}


@dataclass(frozen=True)
class Plan:
    recipe: str
    model: ModelShape
    hardware: Hardware
    data: DataStats
    budget_bytes: float
    budget_source: str
    sequences_seen: float | None  # sequences the trainer processes over the whole run
    tokens_seen: float | None
    estimates: dict[str, MethodEstimate]
    recipe_method: str
    recommendation: Recommendation
    left_out: dict[str, str]  # alternatives the objective or the model's architecture rules out, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "model": self.model.to_dict(),
            "hardware": self.hardware.to_dict(),
            "data": {**self.data.to_dict(), "sequences_seen": self.sequences_seen, "tokens_seen": self.tokens_seen},
            "budget": {"bytes": self.budget_bytes, "source": self.budget_source},
            "estimates": {name: e.to_dict() for name, e in self.estimates.items()},
            "recipe_method": self.recipe_method,
            "left_out": self.left_out,
            "recommendation": {"method": self.recommendation.method, "settings": self.recommendation.settings,
                               "reasons": self.recommendation.reasons},
        }


def make_plan(recipe: Recipe, recipe_path: Path, memory_gb: float | None = None, data: DataStats | None = None) -> Plan:
    """`data`: the recipe's data as planning counts it (`data_stats`, which finds it; given by the memory probes)."""
    if recipe.spec.not_estimated:
        raise UserError(f"objective: {recipe.objective} is not estimated yet (the estimates model one causal language "
                        f"model or classifier trained on one sequence per example: {recipe.spec.not_estimated}); plan "
                        f"the recipe's model as objective: {DEFAULT_OBJECTIVE}, or measure with a short run "
                        f"(train.max_steps)")
    if recipe.merge is not None:
        raise UserError("merge: a merge recipe trains nothing, so there is no training to plan; its cost is scoring "
                        "the merge and each source on their test splits (`ftflow validate` checks the recipe)")
    data = data or data_stats(recipe, recipe_path)
    model = recipe.model
    if data.vocab_size:  # the scratch model init builds has the vocabulary its tokenizer reached on the split
        model = model.model_copy(update={"scratch": model.scratch.model_copy(update={"vocab_size": data.vocab_size})})
    shape = model_shape(model, data.classes)
    hardware = detect_hardware()  # after the imports above, so the process's memory includes torch and friends
    if memory_gb is not None:
        budget, source = memory_gb * 1e9, "--memory-gb"
    else:
        budget, source = hardware.memory_bytes, hardware.device if hardware.gpus else "RAM"
    vision = recipe.train.vision if recipe.spec.sees_images else None
    planner = _Planner(shape, data, recipe.train, hardware, budget, vision)
    left_out = ruled_out(recipe, model, data.classes)
    specs = {name: spec for name, spec in method_specs(recipe, model, shape, bool(hardware.gpus), data.classes,
                                                       vision, left_out).items()
             if spec.is_recipe or name not in left_out}
    estimates = {name: planner.estimate(spec) for name, spec in specs.items()}
    advice = recommend(estimates, data.rows_train, recipe.model.source == "pretrained", budget,
                       _variants(planner, specs, estimates))
    mine = estimates[recipe.method.name]
    lines = [*_model_lines(shape, mine), *_vision_lines(shape, vision),
             *_distributed_lines(recipe.train.distributed, hardware),
             *(f"{name} left out: {why}" for name, why in left_out.items()), *advice.reasons]
    advice = Recommendation(advice.method, lines, advice.settings)
    return Plan(str(recipe_path), shape, hardware, data, budget, source, planner.sequences_seen, planner.tokens_seen,
                estimates, recipe.method.name, advice, left_out)


@dataclass(frozen=True)
class MethodSpec:
    """A method as the estimates see it."""

    label: str
    kind: Kind
    trainable: int
    counted: str  # how `trainable` was counted
    virtual_tokens: int = 0  # prompt methods: added to every sequence
    compute_dtype: str | None = None  # the dtype activations take; None: the base's (qlora: float32)
    is_recipe: bool = False
    setting: str | None = None  # the `--set` that makes the recipe use this method


def ruled_out(recipe: Recipe, model: ModelConfig, classes: list[str] | None) -> dict[str, str]:
    """The alternatives that do not apply to this recipe, and why: few-shot prompting where the objective is not
    scored against reference answers (a classifier's head has no answers to prompt for), and the methods the
    support rules refuse on the model's architecture for the objective (prompt tuning on a decoder classifier)."""
    from ftcore.models.support import ModelKind, refusal

    objective = recipe.spec
    why = {}
    if not objective.references:
        why["few_shot"] = (f"few-shot prompting applies to objectives {' and '.join(objectives_where('references'))}, "
                           f"not {objective.name}")
    kind = ModelKind.of(build_meta_model(model, classes).config, model.trust_remote_code)
    for name in ALTERNATIVES:
        if reason := refusal(kind, name, objective):
            why[name] = reason
    vision = recipe.train.vision
    if objective.sees_images and not (vision.language_model or vision.vision_tower):
        for name in ADAPTERS:  # as init refuses them (peft_methods.on_vision_parts)
            why[name] = ("train.vision trains the projector alone, and an adapter goes on the language model or the "
                         "vision tower; full fine-tuning trains the projector alone")
    return why


def method_specs(recipe: Recipe, model: ModelConfig, shape: ModelShape, gpu: bool,
                 classes: list[str] | None = None, vision: VisionParts | None = None,
                 left_out: Collection[str] = ()) -> dict[str, MethodSpec]:
    """full, lora, qlora, prompt and few_shot on `model` (with `classes`, the classifier init builds; with
    `vision`, train.vision of a vision-language model, on the parts it trains), with the recipe's own method in place
    of its namesake (or added). Adapters `left_out` are not counted (they may not apply: `ruled_out`)."""
    method = recipe.method
    lora_like = method.name in LORA_NAMES  # the alternatives take its rank and targets
    lora_options = {"r": method.r, "target_modules": method.target_modules} if lora_like else {}
    r, targets = lora_options.get("r", DEFAULT_LORA_R), lora_options.get("target_modules", "all-linear")
    tokens = getattr(method, "num_virtual_tokens", PROMPT_VIRTUAL_TOKENS)
    where = targets if isinstance(targets, str) else ", ".join(targets)
    if vision is not None and targets == "all-linear":
        where = _vision_targets(vision)
    # On a GPU, QLoRA computes in the base's 16 bits where it has them; on the CPU in float32 (QLoraMethod's default)
    compute = shape.dtype if gpu and shape.bytes_per_param == 2 else "float32"
    # QLoRA trains the same adapters as LoRA, on a 4-bit base
    lora, lora_counted = (0, "left out") if set(ADAPTERS) <= set(left_out) else \
        method_trainable(model, LoraMethod(r=r, target_modules=targets), classes, vision)
    prompt, prompt_counted = method_trainable(model, PromptMethod(num_virtual_tokens=tokens), classes, vision)
    # every parameter, but on a vision-language model those of the parts train.vision trains
    full = method_trainable(model, FullMethod(), classes, vision)[0] if vision else shape.total_params
    specs = {
        "full": MethodSpec("full fine-tuning", "full", full, "exact (meta model)",
                           setting=_method_setting("full")),
        "lora": MethodSpec(f"LoRA r={r} ({where})", "adapter", lora, lora_counted,
                           setting=_method_setting("lora", **lora_options)),
        "qlora": MethodSpec(f"QLoRA r={r} (4-bit base, {compute} compute)", "qlora", lora, lora_counted,
                            compute_dtype=compute,
                            setting=_method_setting("qlora", **lora_options, compute_dtype=compute)),
        "prompt": MethodSpec(f"prompt tuning ({tokens} virtual tokens)", "prompt", prompt, prompt_counted, tokens,
                             setting=_method_setting("prompt", num_virtual_tokens=tokens)),
        "few_shot": MethodSpec("few-shot prompting (no training)", "few_shot", 0, "nothing trains"),
    }
    # The recipe's own method, counted as init will count it
    trainable, counted = method_trainable(model, method, classes, vision)
    kind = KINDS.get(method.name, "adapter")
    compute = getattr(method, "compute_dtype", None)
    if compute:
        label = f"QLoRA r={r} (4-bit base, {compute} compute)"
    else:
        label = specs[method.name].label if method.name in specs else _label(method)
    specs[method.name] = MethodSpec(label, kind, trainable, counted, tokens if kind == "prompt" else 0, compute,
                                    is_recipe=True)
    return specs


def _variants(planner: _Planner, specs: dict[str, MethodSpec],
              estimates: dict[str, MethodEstimate]) -> dict[str, list[Variant]]:
    """Each method with a setting that saves memory: gradient checkpointing where it is off; for full fine-tuning
    on a GPU, 8-bit optimizer states (which the train stage does not offer: named for the reader only)."""
    variants: dict[str, list[Variant]] = {}
    if not planner.train.gradient_checkpointing:
        checkpointed = replace(planner, train=planner.train.model_copy(update={"gradient_checkpointing": True}))
        for name, spec in specs.items():
            if spec.kind != "few_shot":
                planned = checkpointed.estimate(spec).planned_bytes
                variants[name] = [Variant("with train.gradient_checkpointing: true", planned,
                                          "train.gradient_checkpointing=true")]
    if planner.hardware.gpus:
        variants.setdefault("full", []).append(Variant(
            "with 8-bit AdamW states (bitsandbytes; not an option of the train stage)",
            adamw_8bit_needs(estimates["full"], planner.hardware), None))
    return variants


@dataclass(frozen=True)
class _Planner:
    """What every method's estimate shares: the model, the data, the training options, the memory there is."""

    shape: ModelShape
    data: DataStats
    train: TrainConfig
    hardware: Hardware
    budget: float
    vision: VisionParts | None = None  # a vision-language model's train.vision

    @property
    def sequences_seen(self) -> float | None:
        """Sequences the trainer processes: max_steps batches when set (it overrides epochs), else every train row
        (or, packed, every max_length of train tokens) once per epoch."""
        train = self.train
        if train.max_steps:  # batch_size is per process
            return (train.max_steps * train.batch_size * train.gradient_accumulation_steps
                    * train.distributed.num_processes)
        if self.data.rows_train is None:
            return None
        rows = self.data.rows_train * train.epochs
        return rows * self.data.tokens_per_row / train.max_length if train.packing else rows

    @property
    def tokens_seen(self) -> float | None:
        sequences = self.sequences_seen
        if sequences is None:
            return None
        return sequences * (self.train.max_length if self.train.packing else self.data.tokens_per_row)

    def processes_sharing_memory(self, kind: Kind) -> int:
        """How many training processes the budget must hold: one per GPU, each with its own memory; on the CPU all
        of a machine's processes share its RAM."""
        dist = self.train.distributed
        return 1 if self.hardware.gpus or kind == "few_shot" else dist.num_processes // dist.num_machines

    def estimate(self, spec: MethodSpec) -> MethodEstimate:
        data, train, shape = self.data, self.train, self.shape
        examples = 1  # rows in one sequence, each with its images
        if spec.kind == "few_shot":  # the examples in the prompt, then the question
            examples = min(data.rows_train or 0, FEW_SHOT_MAX_ROWS) + 1
            seq = min(shape.max_positions, int(examples * data.tokens_per_row))
        else:  # packing fills every sequence to max_length
            seq = (train.max_length if train.packing else data.seq_len) + spec.virtual_tokens
        compute = spec.compute_dtype or ("float32" if spec.kind == "qlora" else shape.dtype)
        images, reach = data.images, gradients_reach(spec.kind, self.vision)
        setup = Setup(train.batch_size, seq, DTYPE_BYTES[compute], train.gradient_checkpointing,
                      autocast=train.mixed_precision != "no",
                      # every row of a batch counted with the most tiles and image tokens a sampled row has
                      tiles=examples * images.tiles_per_row_max if images else 0,
                      image_tokens=examples * images.image_tokens_per_row_max if images else 0,
                      input_bytes=examples * images.input_bytes_per_row_max if images else 0, gradients_reach=reach,
                      padding_mask=shape.vision is not None)
        memory = training_memory(spec.kind, shape, spec.trainable, setup)
        if spec.kind != "few_shot":
            memory = per_process(memory, train.distributed)
        flops = None
        if self.tokens_seen is not None:
            tokens = self.tokens_seen + self.sequences_seen * spec.virtual_tokens
            flops = training_flops(spec.kind, shape, spec.trainable, tokens, data.tokens_per_row + spec.virtual_tokens)
            if shape.vision and images and spec.kind != "few_shot":
                flops += vision_flops(shape.vision, self.sequences_seen * images.tiles_per_row_mean,
                                      self.sequences_seen * images.image_tokens_per_row_mean, reach)
        planned = needs(memory, self.hardware) * self.processes_sharing_memory(spec.kind)
        return MethodEstimate(spec.label, spec.kind, spec.trainable, spec.counted, memory, flops, planned,
                              planned <= self.budget, spec.is_recipe, spec.setting)


def gradients_reach(kind: Kind, vision: VisionParts | None) -> GradientsReach:
    """How far back a vision-language model's gradients go (`vision`: train.vision; None for a text model): to the
    tower where it trains (in full, or under an adapter on its linear layers), else to the projector where it trains,
    else into the language model only. Prompt methods train their virtual tokens alone."""
    if vision is None or kind in ("prompt", "few_shot"):
        return "language_model"
    return "tower" if vision.vision_tower else "projector" if vision.projector else "language_model"


def _method_setting(name: str, **options: Any) -> str:
    """`method={name: qlora, r: 8, ...}`: the whole section, since each method accepts only its own fields."""
    return "method=" + yaml.safe_dump({"name": name, **options}, default_flow_style=True, sort_keys=False).strip()


def _vision_targets(vision: VisionParts) -> str:
    """Where all-linear puts an adapter on a vision-language model (peft_methods.on_vision_parts)."""
    adapted = " and the ".join(part.replace("_", " ") for part in vision.trained() if part != "projector")
    return f"all-linear of the {adapted}" + (", the projector whole" if vision.projector else "")


def _label(method) -> str:
    r = getattr(method, "r", None)
    return method.name if r is None else f"{method.name} r={r}"


def _distributed_lines(dist: DistributedConfig, hardware: Hardware) -> list[str]:
    if not dist.enabled:
        return []
    shared = "each process on its own GPU" if hardware.gpus else \
        f"planned for the {dist.num_processes // dist.num_machines} processes that share this machine's RAM"
    return [f"train.distributed: {dist.num_processes} {dist.strategy} processes; peaks are per process, {shared}"]


def _vision_lines(shape: ModelShape, vision: VisionParts | None) -> list[str]:
    """A vision-language model's parts, and which train.vision trains."""
    if shape.vision is None or vision is None:
        return []
    v = shape.vision
    sizes = {"vision_tower": v.tower_params, "projector": v.projector_params, "language_model": v.language_params}
    parts = ", ".join(f"{part.replace('_', ' ')} {human_count(n)} ({'trains' if getattr(vision, part) else 'frozen'})"
                      for part, n in sizes.items())
    return [f"parts (train.vision): {parts}"]


def _model_lines(shape: ModelShape, recipe: MethodEstimate) -> list[str]:
    """What the base costs, and what the recipe's method adds to it."""
    lines = [f"base {shape.dtype}: {human_bytes(shape.total_params * shape.bytes_per_param)} "
             f"({human_count(shape.total_params)} parameters); 4-bit: {human_bytes(quantized_base_bytes(shape))}"]
    if recipe.kind != "full":
        # The fraction as init reports it: of all parameters, the adapter's included
        lines.append(f"{recipe.label} adds {human_count(recipe.trainable)} trainable parameters "
                     f"({recipe.trainable / (shape.total_params + recipe.trainable):.2%} of all)")
    return lines
