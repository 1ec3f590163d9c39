"""The cleaning-step registry: `@cleaning_step` registers a function with its own params model.

Steps come from ftcore's built-ins and from any installed package that declares an entry point in the
`ftflow.cleaning_steps` group (ftflow's own `data_recipes.steps` is one), so a data engineer adds a step by writing
one decorated function, without touching ftcore.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TypeVar

import pandas as pd
from pydantic import ConfigDict

from ftcore.data.sources.config import RecipeModel

ENTRY_POINT_GROUP = "ftflow.cleaning_steps"
T = TypeVar("T")


class StepParams(RecipeModel):
    """Base class of a step's parameters; unknown keys in the recipe are errors."""

    model_config = ConfigDict(extra="forbid")


MESSAGES_COLUMN = "messages"


@dataclass
class Batch:
    """A batch of rows flowing through the cleaning steps, and which columns hold text the steps may rewrite.

    The index of `frame` is the row's position in the collected dataset, stable across batches, so a reason can
    name another row ("duplicate of row 12"). A chat `messages` cell is a JSON list of {role, content}: read and
    rewrite text through `text()` and `map_text()` and a step works on every format without knowing it.
    `state` is the step's own dict; for a `stateful=True` step it is the same dict for every batch of a run.
    """

    frame: pd.DataFrame
    text_columns: list[str]
    state: dict = field(default_factory=dict)

    def text(self, column: str) -> pd.Series:
        """The column as strings; a `messages` column gives the contents of its messages, one per line."""
        values = self.frame[column]
        if column == MESSAGES_COLUMN:
            return values.map(lambda cell: "\n".join(m["content"] for m in json.loads(cell)))
        return values.astype(str)

    def map_text(self, fn: Callable[[str], str], columns: list[str] | None = None) -> pd.DataFrame:
        """A copy of the frame with `fn` applied to every text value of `columns` (default: the text columns);
        in a `messages` column, to each message's content."""
        frame = self.frame.copy()
        for column in columns or self.text_columns:
            frame[column] = frame[column].map(_map_messages(fn) if column == MESSAGES_COLUMN else fn)
        return frame


def _map_messages(fn: Callable[[str], str]) -> Callable[[str], str]:
    def rewrite(cell: str) -> str:
        return json.dumps([{**m, "content": fn(m["content"])} for m in json.loads(cell)], ensure_ascii=False)

    return rewrite


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
    stateful: bool = False

    @property
    def doc(self) -> str:
        """The first line of the step's docstring, shown by `ftflow steps`."""
        return next(iter((self.fn.__doc__ or "").strip().splitlines()), "")


# ftcore's own steps, one module per family.
BUILTIN_STEP_MODULES = ["ftcore.data.steps", "ftcore.data.text_steps", "ftcore.data.dedup_steps",
                        "ftcore.data.nlp_steps", "ftcore.data.filter_steps"]

_STEPS: dict[str, RegisteredStep] = {}
_discovered = False


def cleaning_step(
    name: str, params: type[StepParams] = StepParams, stateful: bool = False
) -> Callable[[StepFn], StepFn]:
    """Register `fn(batch, params) -> StepResult` under `name`, configured in a recipe as `{step: name, ...}`.

    A step sees one batch at a time. Most steps judge each row on its own, so their batches may run in parallel
    (on a Dask cluster when the recipe asks). A step that compares rows across batches (deduplication) declares
    `stateful=True`: it then sees every batch in order, in one process, with the same `batch.state` dict.
    """

    def register(fn: StepFn) -> StepFn:
        existing = _STEPS.get(name)
        if existing and existing.module != fn.__module__:
            raise ValueError(f"cleaning step {name!r} is registered twice: {existing.module} and {fn.__module__}")
        _STEPS[name] = RegisteredStep(name=name, fn=fn, params=params, module=fn.__module__, stateful=stateful)
        return fn

    return register


def discover_steps() -> dict[str, RegisteredStep]:
    """All registered steps: ftcore's built-ins plus every `ftflow.cleaning_steps` entry point, loaded once."""
    global _discovered
    if not _discovered:
        for module in BUILTIN_STEP_MODULES:
            importlib.import_module(module)
        load_plugins(ENTRY_POINT_GROUP)
        _discovered = True
    return dict(_STEPS)


def get_step(name: str) -> RegisteredStep:
    return lookup("cleaning step", name, discover_steps())


def load_plugins(group: str) -> None:
    """Import every module that installed packages declare in the entry-point `group`: they register on import."""
    for ep in entry_points(group=group):
        ep.load()


def lookup(kind: str, name: str, registered: dict[str, T]) -> T:
    """`registered[name]`, or a KeyError listing what is registered."""
    if name not in registered:
        raise KeyError(f"unknown {kind} {name!r}; available: {', '.join(sorted(registered))}")
    return registered[name]
