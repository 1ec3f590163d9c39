"""The recipe's `tune:` section: which recipe fields a search varies and over what values, what it optimises, its
budget, its sampler and its pruner.

    tune:
      space:
        train.learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}
        train.epochs: {int: [1, 5]}
        method.name: {choice: [lora, dora, ia3]}
        method.r: {choice: [4, 8, 16], when: {method.name: [lora, dora]}}   # ia3 has no rank
      objectives: [{metric: exact_match, direction: maximize}]
      n_trials: 20

A field of the space is any recipe field, written as `--set` writes it; `when` makes it apply only where other
fields of the space take the values listed (a method's own fields). Whether each path names a field the recipe has,
and each value one it accepts, is checked against the recipe itself (ftcore/tuning/space.py), not a copy of it.
"""

from __future__ import annotations

import builtins  # IntRange's field is called int, as recipes write it
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from ftcore.schema import Strict

# What a trial reports besides the evaluate stage's metrics: its validation loss (what the pruner reads), and the
# costs a Pareto front weighs quality against.
TRIAL_MEASURES = ("validation_loss", "train_seconds", "trainable_parameters")


class _Param(Strict):
    kind: ClassVar[str]  # the key a recipe writes it with
    when: dict[str, list[Any]] | None = Field(None, description="only where these fields of the space take one of "
                                                                "these values")


class _Range(_Param):
    @property
    def bounds(self) -> tuple[float, float]:
        return getattr(self, self.kind)  # the field is named by the key a recipe writes

    @model_validator(mode="after")
    def _low_below_high(self):
        low, high = self.bounds
        if low >= high:
            raise ValueError(f"the range's low {low} must be below its high {high}")
        return self


class LogUniform(_Range):
    kind = "log_uniform"
    log_uniform: tuple[float, float] = Field(description="[low, high], sampled evenly in log space; low > 0")

    @model_validator(mode="after")
    def _positive(self):
        if self.log_uniform[0] <= 0:
            raise ValueError(f"log_uniform's low {self.log_uniform[0]} must be above 0; use uniform for ranges "
                             "that reach 0")
        return self


class Uniform(_Range):
    kind = "uniform"
    uniform: tuple[float, float] = Field(description="[low, high], sampled evenly")


class IntRange(_Range):
    kind = "int"
    int: tuple[builtins.int, builtins.int] = Field(description="[low, high], whole numbers, both included")


class Choice(_Param):
    kind = "choice"
    choice: list[Any] = Field(min_length=1, description="the values to choose from")


KINDS = (LogUniform, Uniform, IntRange, Choice)
WRITTEN = "{log_uniform: [low, high]}, {uniform: [low, high]}, {int: [low, high]} or {choice: [a, b, ...]}"


def _kind(raw: Any) -> str | None:
    """Which kind of values a space entry gives: the one kind key it has (None: refused, naming the kinds)."""
    if isinstance(raw, _Param):
        return raw.kind
    keys = [k.kind for k in KINDS if isinstance(raw, dict) and k.kind in raw]
    return keys[0] if len(keys) == 1 else None


Param = Annotated[Annotated[LogUniform, Tag("log_uniform")] | Annotated[Uniform, Tag("uniform")]
                  | Annotated[IntRange, Tag("int")] | Annotated[Choice, Tag("choice")],
                  Discriminator(_kind, custom_error_type="space_values",
                                custom_error_message=f"give exactly one of {WRITTEN}")]


class Goal(Strict):
    metric: str = Field(description=f"an evaluate.metrics or evaluate.domain_metrics name, or one of "
                                    f"{', '.join(TRIAL_MEASURES)}")
    direction: Literal["minimize", "maximize"] = "maximize"


class TuneConfig(Strict):
    space: dict[str, Param] = Field(min_length=1, description="recipe field (as --set writes it) -> its values")
    objectives: list[Goal] = Field(min_length=1, description="one: the best trial; several: the Pareto front")
    n_trials: int = Field(20, ge=1, le=10_000)
    timeout_s: float | None = Field(None, gt=0, description="no new trial starts after this long")
    sampler: Literal["tpe", "gp", "cmaes", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    startup_trials: int = Field(3, ge=0, description="trials the median pruner lets finish before it compares "
                                                     "others with them")
    sampler_startup_trials: int | None = Field(None, ge=1, description="trials drawn at random before the tpe, gp or "
                                               "cmaes sampler models the results so far (none: the sampler's own "
                                               "default, 10 for tpe and gp): at or above n_trials the "
                                               "whole search is a random one")
    refit: bool = Field(False, description="train the best configuration again on the train and validation rows "
                                           "together (the test split stays the same rows) before it is scored and "
                                           "registered; otherwise its trial's model is the one registered")

    @model_validator(mode="after")
    def _sampler_models_results(self):
        if self.sampler == "random" and self.sampler_startup_trials is not None:
            raise ValueError("sampler_startup_trials: the random sampler draws every trial at random; drop the field "
                             "or choose sampler tpe, gp or cmaes")
        return self

    @model_validator(mode="after")
    def _conditions_name_the_space(self):
        for path, param in self.space.items():
            for other in (param.when or {}):
                if other not in self.space or other == path:
                    raise ValueError(f"space.{path}.when: {other!r} is not another field of the space "
                                     f"({', '.join(p for p in self.space if p != path)})")
        return self
