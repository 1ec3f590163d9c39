"""Deterministic train/validation/test split and the prompt/completion templating."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ftcore.config import LABEL_COLUMN, DataConfig, SplitConfig


def split_rows(rows: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Seeded shuffle, then carve test and validation off the front; with a label column, per label (stratified),
    so every split keeps the label distribution. Each requested split gets at least one row."""
    rng = np.random.default_rng(cfg.seed)
    groups = [rows] if LABEL_COLUMN not in rows else [g for _, g in rows.groupby(LABEL_COLUMN, sort=True)]
    parts: dict[str, list[pd.DataFrame]] = {"train": [], "validation": [], "test": []}
    for group in groups:
        shuffled = group.iloc[rng.permutation(len(group))]
        n_test, n_val = _count(len(group), cfg.test), _count(len(group), cfg.validation)
        parts["test"].append(shuffled.iloc[:n_test])
        parts["validation"].append(shuffled.iloc[n_test : n_test + n_val])
        parts["train"].append(shuffled.iloc[n_test + n_val :])
    if len(groups) == 1:
        return {name: frames[0].reset_index(drop=True) for name, frames in parts.items()}
    # Interleave the labels again, reproducibly, so a split is not sorted by label.
    return {name: _shuffled(pd.concat(frames), rng) for name, frames in parts.items()}


def _shuffled(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def _count(n: int, fraction: float) -> int:
    return max(1, math.floor(n * fraction)) if fraction > 0 else 0


def format_for_model(rows: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """`prompt`/`completion` become exactly what the model sees; the cleaned originals stay as `raw_*`."""
    if cfg.format != "prompt_completion":
        return rows
    return rows.assign(
        raw_prompt=rows["prompt"],
        raw_completion=rows["completion"],
        prompt=rows["prompt"].map(lambda p: cfg.prompt_template.replace("{prompt}", p)),
        completion=rows["completion"].map(lambda c: cfg.completion_template.replace("{completion}", c)),
    )
