"""Bootstrap confidence intervals: the metric recomputed on examples resampled with replacement, its percentiles
taken as the interval (Efron's percentile bootstrap). The resampling is seeded, so a re-run reports the same
interval; corpus metrics (BLEU, chrF, perplexity) are recomputed from their summed statistics, not averaged."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_interval(rows: np.ndarray, aggregate: Callable[[np.ndarray], float], resamples: int,
                       confidence: float, seed: int = 0) -> tuple[float, float]:
    """(low, high) of the `confidence` interval of `aggregate(rows)`; NaN without at least two examples."""
    n = len(rows)
    if n < 2 or resamples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([aggregate(rows[rng.integers(0, n, n)]) for _ in range(resamples)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def perplexity_of(rows: np.ndarray) -> float:
    """exp(mean negative log-likelihood per token) of (summed nll, tokens) rows."""
    tokens = rows[:, 1].sum()
    return float(np.exp(rows[:, 0].sum() / tokens)) if tokens else float("nan")
