"""Built-in cleaning steps. Each is a plain function registered with `@cleaning_step`; see data_recipes/steps for
how a data engineer adds one."""

from __future__ import annotations

import html
import re

import pandas as pd

from ftcore.registry import Batch, StepParams, StepResult, cleaning_step

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def _map_text(batch: Batch, fn) -> StepResult:
    frame = batch.frame.copy()
    for col in batch.text_columns:
        frame[col] = frame[col].map(fn)
    return StepResult.keep_all(frame)


@cleaning_step("normalize_whitespace")
def normalize_whitespace(batch: Batch, _: StepParams) -> StepResult:
    """Collapse runs of whitespace to one space and strip both ends."""
    return _map_text(batch, lambda s: _SPACE.sub(" ", s).strip())


@cleaning_step("strip_markup")
def strip_markup(batch: Batch, _: StepParams) -> StepResult:
    """Remove HTML/XML tags and unescape entities (&amp; -> &)."""
    return _map_text(batch, lambda s: _SPACE.sub(" ", html.unescape(_TAG.sub(" ", s))).strip())


class DropEmptyParams(StepParams):
    min_chars: int = 1


@cleaning_step("drop_empty", params=DropEmptyParams)
def drop_empty(batch: Batch, p: DropEmptyParams) -> StepResult:
    """Quarantine rows where any text column has fewer than `min_chars` non-space characters."""
    lengths = pd.DataFrame({c: batch.frame[c].str.strip().str.len() for c in batch.text_columns})
    too_short = lengths.lt(p.min_chars)
    reason = too_short.apply(
        lambda row: "empty " + ", ".join(c for c in batch.text_columns if row[c]), axis=1
    ) if len(lengths) else pd.Series(dtype=str)
    return StepResult.split(batch.frame, ~too_short.any(axis=1), reason)


class DropDuplicatesParams(StepParams):
    case_sensitive: bool = False
    columns: list[str] | None = None  # default: all text columns


@cleaning_step("drop_duplicates", params=DropDuplicatesParams)
def drop_duplicates(batch: Batch, p: DropDuplicatesParams) -> StepResult:
    """Quarantine exact duplicates (after any earlier normalisation), keeping the first occurrence."""
    cols = p.columns or batch.text_columns
    key = batch.frame[cols].astype(str)
    if not p.case_sensitive:
        key = key.apply(lambda col: col.str.lower())
    duplicated = key.duplicated(keep="first")
    row_ids = pd.Series(batch.frame.index, index=batch.frame.index)
    first_index = row_ids.groupby([key[c] for c in cols], sort=False).transform("first")
    reason = first_index.map(lambda i: f"duplicate of row {i}")
    return StepResult.split(batch.frame, ~duplicated, reason)
