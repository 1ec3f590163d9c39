"""The recipe's `reward` section (objective rl): the reward functions and reward model the policy is optimised for."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from ftcore.alignment.rewards import REWARDS
from ftcore.models.config import MODEL_URI
from ftcore.schema import PluginSpec, Strict


class RewardFunctionSpec(PluginSpec):
    """One registered reward function (`ftflow rewards` lists them) with its weight and parameters."""

    function: str
    weight: float = 1.0

    def params_model(self) -> type[BaseModel]:
        return REWARDS.get(self.function).params


class RewardConfig(Strict):
    """What objective rl optimises and is evaluated on (`mean_reward`): a reward model, reward functions, or both
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

    @property
    def function_names(self) -> list[str]:
        return [spec.function for spec in self.functions]

    def function_modules(self) -> set[str]:
        """The modules the reward functions come from: code the recipe picks by name, for the cache keys."""
        return REWARDS.modules(self.function_names)

    def registered_model(self) -> tuple[str, str | None, str | None] | None:
        """(name, alias, version) of a models:/ URI, else None (a folder)."""
        match = MODEL_URI.match(self.model or "")
        return (match["name"], match["alias"], match["version"]) if match else None
