"""The cleaning-step API: `@cleaning_step` registers a function with its own params model, and the types a step
works with (`Batch`, `StepResult`, `StepParams`). Data engineers import them from here.

Steps live in one `Registry` (ftcore/plugins.py), `STEPS`: ftcore's built-ins (the `ftcore.data.steps` package,
imported on first lookup) and any installed package's modules declared in the `ftflow.cleaning_steps` entry-point
group (ftflow's own `data_recipes.steps` is one), so a data engineer adds a step by writing one decorated function,
without touching ftcore.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import ConfigDict

from ftcore.columns import IMAGES_COLUMN
from ftcore.plugins import Plugin, Registry
from ftcore.schema import RecipeModel


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
    Rows of the image_text format name their images in an `images` column (ftcore/data/images.py); `images` is the
    folder holding those files, where a step that rewrites an image stores the new one.
    """

    frame: pd.DataFrame
    text_columns: list[str]
    state: dict = field(default_factory=dict)
    images: Path | None = None

    def text(self, column: str) -> pd.Series:
        """The column as strings; a `messages` column gives the contents of its messages, one per line."""
        values = self.frame[column]
        if column == MESSAGES_COLUMN:
            return values.map(lambda cell: "\n".join(m["content"] for m in json.loads(cell)))
        return values.astype(str)

    def identity(self, columns: list[str] | None = None) -> pd.Series:
        """What makes two rows the same row: their text columns (or `columns`) joined, and the images they show
        (two pictures with one caption are two rows)."""
        keys = pd.concat([self.text(c) for c in columns or self.text_columns], axis=1).agg("\x1f".join, axis=1)
        return keys + "\x1f" + self.frame[IMAGES_COLUMN] if IMAGES_COLUMN in self.frame else keys

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
class RegisteredStep(Plugin):
    fn: StepFn
    params: type[StepParams] = StepParams
    stateful: bool = False


STEPS: Registry[RegisteredStep] = Registry("cleaning step", RegisteredStep, group="ftflow.cleaning_steps",
                                           builtins=["ftcore.data.steps"])


def cleaning_step(
    name: str, params: type[StepParams] = StepParams, stateful: bool = False
) -> Callable[[StepFn], StepFn]:
    """Register `fn(batch, params) -> StepResult` under `name`, configured in a recipe as `{step: name, ...}`.

    A step sees one batch at a time. Most steps judge each row on its own, so their batches may run in parallel
    (on a Dask cluster when the recipe asks). A step that compares rows across batches (deduplication) declares
    `stateful=True`: it then sees every batch in order, in one process, with the same `batch.state` dict.
    """
    return STEPS.register(name, params=params, stateful=stateful)
