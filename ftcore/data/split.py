"""Deterministic train/validation/test split and the prompt/completion templating."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ftcore.config import LABEL_COLUMN, DataConfig, SplitConfig

SPLITS = ("train", "validation", "test")


def assign_splits(n: int, labels: pd.Series | None, holdout: np.ndarray, cfg: SplitConfig,
                  test_fraction: float) -> np.ndarray:
    """The split of each of `n` rows. Holdout rows (from data.test_sources) are the test split; the others are
    shuffled with the seed and test and validation are carved off the front, per label when there are labels
    (stratified), so every split keeps the label distribution. Each requested split gets at least one row."""
    assignment = np.full(n, "train", dtype=object)
    assignment[holdout] = "test"
    rng = np.random.default_rng(cfg.seed)
    candidates = np.flatnonzero(~holdout)
    if labels is None:
        groups = [candidates]
    else:
        group_labels = labels.to_numpy()[candidates]
        groups = [candidates[group_labels == label] for label in sorted(set(group_labels))]
    for group in groups:
        shuffled = group[rng.permutation(len(group))]
        n_test, n_val = _count(len(group), test_fraction), _count(len(group), cfg.validation)
        assignment[shuffled[:n_test]] = "test"
        assignment[shuffled[n_test: n_test + n_val]] = "validation"
    return assignment


def split_rows(rows: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """An in-memory table split as `assign_splits` would (no holdout rows), rows in their original order."""
    labels = rows[LABEL_COLUMN].astype(str) if LABEL_COLUMN in rows else None
    names = assign_splits(len(rows), labels, np.zeros(len(rows), dtype=bool), cfg, cfg.test_or_default)
    return {name: rows[names == name].reset_index(drop=True) for name in SPLITS}


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
