"""Built-in cleaning steps. Each is a plain function registered with `@cleaning_step`; see data_recipes/steps for
how a data engineer adds one."""

from __future__ import annotations

import hashlib
import html
import re

import pandas as pd

from ftcore.registry import Batch, StepParams, StepResult, cleaning_step

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


@cleaning_step("normalize_whitespace")
def normalize_whitespace(batch: Batch, _: StepParams) -> StepResult:
    """Collapse runs of whitespace to one space and strip both ends."""
    return StepResult.keep_all(batch.map_text(lambda s: _SPACE.sub(" ", s).strip()))


@cleaning_step("strip_markup")
def strip_markup(batch: Batch, _: StepParams) -> StepResult:
    """Remove HTML/XML tags and unescape entities (&amp; -> &)."""
    return StepResult.keep_all(batch.map_text(lambda s: _SPACE.sub(" ", html.unescape(_TAG.sub(" ", s))).strip()))


class DropEmptyParams(StepParams):
    min_chars: int = 1


@cleaning_step("drop_empty", params=DropEmptyParams)
def drop_empty(batch: Batch, p: DropEmptyParams) -> StepResult:
    """Quarantine rows where any text column has fewer than `min_chars` non-space characters."""
    lengths = pd.DataFrame({c: batch.text(c).str.strip().str.len() for c in batch.text_columns})
    too_short = lengths.lt(p.min_chars)
    reason = too_short.apply(
        lambda row: "empty " + ", ".join(c for c in batch.text_columns if row[c]), axis=1
    ) if len(lengths) else pd.Series(dtype=str)
    return StepResult.split(batch.frame, ~too_short.any(axis=1), reason)


class DropDuplicatesParams(StepParams):
    case_sensitive: bool = False
    columns: list[str] | None = None  # default: all text columns


@cleaning_step("drop_duplicates", params=DropDuplicatesParams, stateful=True)
def drop_duplicates(batch: Batch, p: DropDuplicatesParams) -> StepResult:
    """Quarantine exact duplicates (after any earlier normalisation), keeping the first occurrence."""
    keys = pd.concat([batch.text(c) for c in p.columns or batch.text_columns], axis=1).agg("\x1f".join, axis=1)
    if not p.case_sensitive:
        keys = keys.str.lower()
    # 16-byte digests of the rows seen so far, across batches: memory grows with distinct rows, not their text.
    first_seen: dict[bytes, int] = batch.state.setdefault("first_seen", {})
    reasons = pd.Series("", index=batch.frame.index, dtype=object)
    for index, key in keys.items():
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        first = first_seen.setdefault(digest, index)
        if first != index:
            reasons[index] = f"duplicate of row {first}"
    return StepResult.split(batch.frame, reasons == "", reasons)
