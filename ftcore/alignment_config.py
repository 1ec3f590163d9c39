"""The recipe's alignment and continual-learning options (docs/alignment.md, docs/continual.md): how preference
pairs train a policy (`train.preference`), how a policy is optimised online (`train.rl`), what rewards it (`reward`,
shared by the train and evaluate stages so that evaluation scores with the reward training optimised), and what a
retrained model must not forget (`continual`). Split from ftcore.config, which re-exports them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from ftcore.data.sources.config import Fraction, PluginSpec, Strict, resolve_relative

# TRL's DPO loss variants (DPOConfig.loss_type); several combine with loss_weights.
DpoLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class PreferenceConfig(Strict):
    """Preference optimisation on (prompt, chosen, rejected) pairs (task dpo)."""

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
    """Online optimisation of the policy against `reward` (task rl): for each prompt the policy samples
    `num_generations` answers and learns from how each scores against the others (group-relative baseline)."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    num_generations: int = Field(4, ge=2, description="answers sampled per prompt; the batch size must be a "
                                                      "multiple of it")
    max_completion_length: int = Field(32, ge=1, description="new tokens per sampled answer")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    kl_beta: float = Field(0.0, ge=0, description="weight of the KL penalty towards the starting policy (0: none, "
                                                  "and no reference model is kept)")


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


class RewardFunctionSpec(PluginSpec):
    """One registered reward function (`ftflow rewards` lists them) with its weight and parameters."""

    function: str
    weight: float = 1.0

    def params_model(self) -> type[BaseModel]:
        from ftcore.alignment.rewards import get_reward_function  # imported here: it imports the built-ins

        return get_reward_function(self.function).params


class RewardConfig(Strict):
    """What task rl optimises and is evaluated on (`mean_reward`): a reward model, reward functions, or both
    (weighted sum)."""

    model: str | None = Field(None, description="a reward model: a local folder, or a registered one as "
                                                "models:/NAME@ALIAS or models:/NAME/VERSION")
    model_weight: float = 1.0
    functions: list[RewardFunctionSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something_rewards(self) -> RewardConfig:
        if self.model is None and not self.functions:
            raise ValueError("give a reward model (model:) or reward functions (functions:)")
        return self

    def registered_model(self) -> tuple[str, str | None, str | None] | None:
        """(name, alias, version) of a models:/ URI, else None (a folder)."""
        match = MODEL_URI.match(self.model or "")
        return (match["name"], match["alias"], match["version"]) if match else None


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
