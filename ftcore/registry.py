"""The cleaning-step registry: `@cleaning_step` registers a function with its own params model.

Steps come from ftcore's built-ins and from any installed package that declares an entry point in the
`ftflow.cleaning_steps` group (ftflow's own `data_recipes.steps` is one), so a data engineer adds a step by writing
one decorated function, without touching ftcore.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import pandas as pd
from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "ftflow.cleaning_steps"


class StepParams(BaseModel):
    """Base class of a step's parameters; unknown keys in the recipe are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Batch:
    """Rows flowing through the cleaning steps, and which columns hold text the steps may rewrite."""

    frame: pd.DataFrame
    text_columns: list[str]


@dataclass
class StepResult:
    """What a step keeps and what it quarantines. Every quarantined row carries a reason."""

    kept: pd.DataFrame
    quarantined: pd.DataFrame  # same columns as `kept`, plus `reason`

    @classmethod
    def keep_all(cls, frame: pd.DataFrame) -> StepResult:
        return cls(kept=frame, quarantined=frame.iloc[0:0].assign(reason=pd.Series(dtype=str)))

    @classmethod
    def split(cls, frame: pd.DataFrame, keep: pd.Series, reason: str | pd.Series) -> StepResult:
        """Keep rows where `keep` is true; quarantine the others with `reason` (one string, or one per row)."""
        dropped = frame[~keep]
        reasons = reason[~keep] if isinstance(reason, pd.Series) else pd.Series(reason, index=dropped.index)
        return cls(kept=frame[keep], quarantined=dropped.assign(reason=reasons.astype(str)))


StepFn = Callable[[Batch, StepParams], StepResult]


@dataclass(frozen=True)
class RegisteredStep:
    name: str
    fn: StepFn
    params: type[StepParams]
    module: str

    @property
    def doc(self) -> str:
        """The first line of the step's docstring, shown by `ftflow steps`."""
        return next(iter((self.fn.__doc__ or "").strip().splitlines()), "")


_STEPS: dict[str, RegisteredStep] = {}
_discovered = False


def cleaning_step(name: str, params: type[StepParams] = StepParams) -> Callable[[StepFn], StepFn]:
    """Register `fn(batch, params) -> StepResult` under `name`, configured in a recipe as `{step: name, ...}`."""

    def register(fn: StepFn) -> StepFn:
        existing = _STEPS.get(name)
        if existing and existing.module != fn.__module__:
            raise ValueError(f"cleaning step {name!r} is registered twice: {existing.module} and {fn.__module__}")
        _STEPS[name] = RegisteredStep(name=name, fn=fn, params=params, module=fn.__module__)
        return fn

    return register


def discover_steps() -> dict[str, RegisteredStep]:
    """All registered steps: ftcore's built-ins plus every `ftflow.cleaning_steps` entry point, loaded once."""
    global _discovered
    if not _discovered:
        importlib.import_module("ftcore.data.steps")
        importlib.import_module("ftcore.data.text_steps")
        importlib.import_module("ftcore.data.dedup_steps")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _discovered = True
    return dict(_STEPS)


def get_step(name: str) -> RegisteredStep:
    steps = discover_steps()
    if name not in steps:
        raise KeyError(f"unknown cleaning step {name!r}; available: {', '.join(sorted(steps))}")
    return steps[name]
