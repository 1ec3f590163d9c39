"""The recipe's `train` section (steps, batches, checkpoints, several processes), its alignment options
(docs/alignment.md: how preference pairs train a policy, `train.preference`, and how a policy is optimised online,
`train.rl`), `continual` (docs/continual.md): what a retrained model must not forget, and `merge` (docs/merging.md):
registered adapters combined instead of trained. What rewards an rl policy: ftcore/alignment/config.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ftcore.models.config import MODEL_URI, VisionParts
from ftcore.schema import Fraction, Seed, Strict, resolve_relative

# TRL's DPO loss variants (DPOConfig.loss_type); several combine with loss_weights.
DpoLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class PreferenceConfig(Strict):
    """Preference optimisation on (prompt, chosen, rejected) pairs (objective dpo)."""

    algorithm: Literal["dpo", "kto", "orpo"] = Field(
        "dpo", description="dpo: against a frozen reference (the model before training: with an adapter, the base "
                           "with the adapter off); kto: the pairs unpaired into desirable/undesirable answers; orpo: "
                           "no reference, an odds-ratio term added to the SFT loss on the chosen answers")
    beta: float = Field(0.1, gt=0, description="dpo/kto: how far the policy may move from the reference (higher: "
                                               "less); orpo: the weight of the odds-ratio term")
    loss_type: list[DpoLoss] = Field(default_factory=lambda: ["sigmoid"], min_length=1,
                                     description="dpo: TRL's loss variants; several are summed with loss_weights")
    loss_weights: list[float] | None = Field(None, description="dpo: one weight per loss_type")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo robust/exo: assumed share of flipped labels")

    @model_validator(mode="after")
    def _dpo_options_for_dpo(self) -> PreferenceConfig:
        dpo_only = {"loss_type", "loss_weights", "label_smoothing"} & self.model_fields_set
        if self.algorithm != "dpo" and dpo_only:
            raise ValueError(f"{', '.join(sorted(dpo_only))}: only for algorithm: dpo")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights: one weight per loss_type ({len(self.loss_type)})")
        return self


class RlConfig(Strict):
    """Online optimisation of the policy against `reward` (objective rl): for each prompt the policy samples
    `num_generations` answers and learns from how each scores against the others (group-relative baseline)."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    num_generations: int = Field(4, ge=2, description="answers sampled per prompt; the batch size must be a "
                                                      "multiple of it")
    max_completion_length: int = Field(32, ge=1, description="new tokens per sampled answer")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    kl_beta: float = Field(0.0, ge=0, description="weight of the KL penalty towards the starting policy (0: none, "
                                                  "and no reference model is kept)")


class RegularizerConfig(Strict):
    """A penalty pulling the trainable weights toward their values at the start of training."""

    method: Literal["l2sp", "ewc"] = Field(
        "l2sp", description="l2sp: squared distance to the starting weights; ewc: the same, each weight scaled by "
                            "its diagonal Fisher information on the retained data (how much the old task needs it)")
    weight: float = Field(0.01, gt=0, description="the penalty's weight in the loss")
    fisher_batches: int = Field(8, ge=1, description="ewc: batches of retained rows the Fisher is estimated on")


class ContinualConfig(Strict):
    """Retraining without forgetting: the retained data (what the model knew), how much of it to replay, a
    regulariser, and the forgetting the evaluate stage measures on the retained data's test part."""

    data: str = Field("champion", description="champion: the dataset the starting version was trained on (its train "
                                              "split replays, its test split measures forgetting); or a .jsonl or "
                                              ".parquet file of general data in data.format's columns (80% replays, "
                                              "20% measures forgetting)")
    replay: Fraction = Field(0.0, description="share of the training rows drawn from the retained data (0: none)")
    regularizer: RegularizerConfig | None = None

    @field_validator("data")
    @classmethod
    def _champion_or_a_file(cls, v: str, info: ValidationInfo) -> str:
        if v == CHAMPION_DATA:
            return v
        path = resolve_relative(Path(v), info)
        if path.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"{v!r}: give champion, or a .jsonl or .parquet file of general data")
        if not path.is_file():
            raise ValueError(f"file not found: {path} (paths are relative to the recipe's folder)")
        return str(path)


CHAMPION_DATA = "champion"


class DistributedConfig(Strict):
    """Training in several processes, launched through accelerate (docs/scale-out.md). The global batch is
    num_processes x batch_size x gradient_accumulation_steps."""

    num_processes: int = Field(1, ge=1, description="processes over all machines, one per GPU (on CPU, each gets "
                                                    "its share of the cores); 1: train in the stage's own process")
    backend: Literal["gloo", "nccl"] | None = Field(None, description="collective backend; none: nccl on CUDA GPUs, "
                                                                      "gloo on CPU")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full copy per process; fsdp: parameters, gradients and optimizer state sharded "
                           "(FSDP2); deepspeed: ZeRO at zero_stage (needs the deepspeed package)")
    zero_stage: Literal[1, 2, 3] | None = Field(None, description="strategy deepspeed: what ZeRO shards (1 optimizer "
                                                                 "state, 2 and gradients, 3 and parameters); none: 2")
    num_machines: int = Field(1, ge=1, description="machines taking part; every one runs the launch command the "
                                                   "stage logs (docs/scale-out.md)")
    main_process: str | None = Field(None, pattern=r"^[^:\s]+:\d{1,5}$",
                                     description="num_machines > 1: host:port of machine 0's rendezvous")

    @model_validator(mode="after")
    def _machines_fit(self) -> DistributedConfig:
        if self.zero_stage is not None and self.strategy != "deepspeed":
            raise ValueError("zero_stage: only for strategy: deepspeed")
        if self.strategy != "ddp" and self.num_processes == 1:
            raise ValueError(f"strategy {self.strategy} shards over processes: set num_processes above 1")
        if self.num_machines > 1 and self.main_process is None:
            raise ValueError("num_machines > 1 needs main_process (host:port of machine 0, reachable from the others)")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) must be a multiple of num_machines "
                             f"({self.num_machines}): each machine runs the same number")
        return self

    @property
    def enabled(self) -> bool:
        return self.num_processes > 1


class TrainConfig(Strict):
    # Bounded: the trainer turns epochs into a step count (1e400 is inf and overflows; 1e300 never ends).
    epochs: float = Field(3, gt=0, le=10_000)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5.0e-3, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: Fraction = 0.0
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(128, ge=8)
    logging_steps: int = Field(10, ge=1)
    seed: Seed = 0
    # Evaluation, checkpoints and throughput options (docs/training.md).
    eval_steps: int | None = Field(
        None, ge=1, description="evaluate on the validation split every N steps; none: once, at the end")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps; a retried or re-run stage resumes "
                                                  "from the last complete checkpoint")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (the newest)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without a lower validation loss; none: off")
    packing: bool = Field(False, description="pack several examples into each max_length sequence")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="bf16 runs on CPU and recent GPUs; fp16 needs a CUDA GPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, "
                                                            "slower steps")
    preference: PreferenceConfig = PreferenceConfig()
    rl: RlConfig = RlConfig()
    vision: VisionParts = VisionParts()
    distributed: DistributedConfig = DistributedConfig()

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _unquoted_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _early_stopping_needs_evaluations(self) -> TrainConfig:
        if self.early_stopping_patience is None:
            return self
        if self.eval_steps is None:
            raise ValueError("early_stopping_patience needs eval_steps: early stopping compares the validation "
                             "loss evaluated every eval_steps steps")
        if self.max_steps is not None and self.eval_steps >= self.max_steps:
            raise ValueError(f"early_stopping_patience: eval_steps ({self.eval_steps}) must be below max_steps "
                             f"({self.max_steps}), or no evaluation happens before training ends")
        return self


# PEFT's add_weighted_adapter combinations (docs/merging.md): linear and cat add the adapters (cat keeps every rank,
# linear needs equal ranks), svd re-factors their summed change at the largest rank; ties and the dare kinds keep a
# `density` share of each adapter's weights (the largest for ties, a random draw for dare) before adding them.
Combination = Literal["linear", "ties", "dare_linear", "dare_ties", "svd", "cat"]
NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties")


class MergeConfig(Strict):
    """The recipe's `merge:` section: registered LoRA versions that share a base, combined into one adapter instead
    of training one. Each source's test split (from the dataset its run recorded) is scored under its own task."""

    sources: list[str] = Field(min_length=2, description="registered versions: models:/NAME@ALIAS or "
                                                          "models:/NAME/VERSION, all trained on one base")
    weights: list[float] | None = Field(None, description="one per source, in order (default: 1 each)")
    combination: Combination = "linear"
    density: float | None = Field(None, gt=0, le=1, description="ties, dare_linear, dare_ties: the share of each "
                                                                "adapter's weights kept")
    seed: Seed = Field(0, description="dare's random draw of the weights kept")

    @field_validator("sources")
    @classmethod
    def _registered_versions(cls, sources: list[str]) -> list[str]:
        for i, source in enumerate(sources):
            if not MODEL_URI.match(source):
                raise ValueError(f"sources.{i}: {source!r} is not a registered version; write models:/NAME@ALIAS or "
                                 "models:/NAME/VERSION")
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources: each version once, got {sources}")
        return sources

    @model_validator(mode="after")
    def _weights_and_density_fit(self) -> MergeConfig:
        if self.weights is not None and len(self.weights) != len(self.sources):
            raise ValueError(f"weights: one per source: {len(self.sources)} sources, {len(self.weights)} weights")
        if self.combination in NEEDS_DENSITY and self.density is None:
            raise ValueError(f"density: combination {self.combination} keeps a share of each adapter's weights; "
                             "give density (e.g. 0.5)")
        if self.combination not in NEEDS_DENSITY and self.density is not None:
            raise ValueError(f"density: only for combination {', '.join(NEEDS_DENSITY)}, not {self.combination}")
        return self

    @property
    def source_weights(self) -> list[float]:
        return self.weights if self.weights is not None else [1.0] * len(self.sources)

    def tasks(self) -> dict[str, str]:
        """Each source's task name (its rows' `task`, the suffix of its metrics): the registered model's name, with
        the alias or version where two sources are versions of one model."""
        names = [MODEL_URI.match(source)["name"] for source in self.sources]
        return {source: name if names.count(name) == 1 else re.sub(r"[^A-Za-z0-9_.-]", "_", source.removeprefix(
            "models:/")) for source, name in zip(self.sources, names, strict=True)}
