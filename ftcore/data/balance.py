"""Balancing the train split by a label or category column, with imbalanced-learn samplers over row indices
(text cannot be interpolated, so the samplers choose rows rather than synthesise features)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftcore.config import BalanceConfig
from ftcore.errors import DataError


def balance_rows(train: pd.DataFrame, cfg: BalanceConfig) -> tuple[pd.DataFrame, dict[str, float]]:
    """The rebalanced train rows, and class counts before and after as `<column>.<class>.before/after` metrics."""
    if cfg.strategy == "none":
        return train, {}
    labels = _labels(train, cfg)
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    sampler = (RandomOverSampler if cfg.strategy == "oversample" else RandomUnderSampler)(random_state=cfg.seed)
    indices, _ = sampler.fit_resample(np.arange(len(train)).reshape(-1, 1), labels)
    balanced = train.iloc[indices.ravel()].reset_index(drop=True)
    metrics = {f"{cfg.column}.{k}.before": float(v) for k, v in labels.value_counts().items()}
    metrics.update({f"{cfg.column}.{k}.after": float(v) for k, v in balanced[cfg.column].value_counts().items()})
    return balanced, metrics


def _labels(train: pd.DataFrame, cfg: BalanceConfig) -> pd.Series:
    if cfg.column not in train.columns:
        raise DataError(f"balance.column: no column {cfg.column!r} in the data; columns: {', '.join(train.columns)}")
    labels = train[cfg.column].astype(str)
    if labels.nunique() < 2:
        raise DataError(f"balance: column {cfg.column!r} has one class ({labels.iloc[0]!r}) in the train split; "
                        f"{cfg.strategy} needs at least two (or use strategy: none)")
    return labels
