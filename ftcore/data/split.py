"""Deterministic train/validation/test split and the prompt/completion templating."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ftcore.config import DataConfig, SplitConfig


def split_rows(rows: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Seeded shuffle, then carve test and validation off the front. Each requested split gets at least one row."""
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    shuffled = rows.iloc[order].reset_index(drop=True)
    n_test = _count(len(rows), cfg.test)
    n_val = _count(len(rows), cfg.validation)
    return {
        "train": shuffled.iloc[n_test + n_val :].reset_index(drop=True),
        "validation": shuffled.iloc[n_test : n_test + n_val].reset_index(drop=True),
        "test": shuffled.iloc[:n_test].reset_index(drop=True),
    }


def _count(n: int, fraction: float) -> int:
    return max(1, math.floor(n * fraction)) if fraction > 0 else 0


def format_for_model(rows: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """`prompt`/`completion` become exactly what the model sees; the cleaned originals stay as `raw_*`."""
    return rows.assign(
        raw_prompt=rows["prompt"],
        raw_completion=rows["completion"],
        prompt=rows["prompt"].map(lambda p: cfg.prompt_template.replace("{prompt}", p)),
        completion=rows["completion"].map(lambda c: cfg.completion_template.replace("{completion}", c)),
    )
