"""Bootstrap confidence intervals: the metric recomputed on examples resampled with replacement, its percentiles
taken as the interval (Efron's percentile bootstrap). The resampling is seeded, so a re-run reports the same
interval; corpus metrics (BLEU, chrF, perplexity) are recomputed from their summed statistics, not averaged."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

NO_INTERVAL = (float("nan"), float("nan"))


def bootstrap_interval(rows: np.ndarray, aggregate: Callable[[np.ndarray], float], resamples: int,
                       confidence: float, seed: int = 0) -> tuple[float, float]:
    """(low, high) of the `confidence` interval of `aggregate(rows)`; NaN without at least two examples."""
    if len(rows) < 2 or resamples == 0:
        return NO_INTERVAL
    return _interval([aggregate(rows[index]) for index in _resamples(len(rows), resamples, seed)], confidence)


def paired_interval(rows: np.ndarray, reference_rows: np.ndarray, aggregate: Callable[[np.ndarray], float],
                    resamples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """(low, high) of the interval of `aggregate(rows) - aggregate(reference_rows)`, two models scored on the same
    examples: each resample draws the same examples for both, so the variation they share (easy and hard examples)
    cancels and the interval is that of the difference, narrower than the two intervals taken apart."""
    if len(rows) < 2 or resamples == 0 or len(reference_rows) != len(rows):
        return NO_INTERVAL
    return _interval([aggregate(rows[index]) - aggregate(reference_rows[index])
                      for index in _resamples(len(rows), resamples, seed)], confidence)


def _resamples(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, n)


def _interval(values: list[float], confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(np.array(values), [tail, 100 - tail])
    return float(low), float(high)


def perplexity_of(rows: np.ndarray) -> float:
    """exp(mean negative log-likelihood per token) of (summed nll, tokens) rows."""
    tokens = rows[:, 1].sum()
    return float(np.exp(rows[:, 0].sum() / tokens)) if tokens else float("nan")
