"""The monitor report's charts, as PNG bytes: the latency histogram against its objective, latency and errors over
the window, and the input lengths live against training."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from ftcore.monitor.window import error_shares
from ftcore.training.plots import pyplot

MAX_TIME_BINS = 30


def latency_histogram(latencies: np.ndarray, limit_s: float) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(latencies, bins=min(40, max(5, len(latencies) // 3)), color="C0", alpha=0.8)
    ax.axvline(limit_s, color="C3", linestyle="--", label=f"objective: p95 ≤ {limit_s:g} s")
    ax.axvline(float(np.percentile(latencies, 95)), color="C1", label="p95 measured")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def traffic_over_time(rows: pd.DataFrame, limit_s: float) -> bytes:
    """Latency p95 (top) and the 5xx and 4xx shares of the answered requests (bottom) per time bin of the window."""
    plt = pyplot()
    import matplotlib.dates as mdates  # after pyplot(), which picks the file-only backend

    times = pd.to_datetime(rows["ts"], unit="s", utc=True)
    bins = pd.cut(rows["ts"], bins=min(MAX_TIME_BINS, max(1, len(rows) // 5))) if len(rows) > 1 else None
    grouped = rows.groupby(bins if bins is not None else np.zeros(len(rows)), observed=True)
    centres = pd.to_datetime(grouped["ts"].mean(), unit="s", utc=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.2), sharex=True)
    top.plot(centres, grouped["latency_s"].quantile(0.95), marker="o", markersize=3, label="p95 per bin")
    top.scatter(times, rows["latency_s"], s=4, color="grey", alpha=0.4, label="requests")
    top.axhline(limit_s, color="C3", linestyle="--", label=f"objective {limit_s:g} s")
    top.set_ylabel("latency (s)")
    top.legend(fontsize=7)
    shares = grouped["status"].apply(lambda s: error_shares(s.to_numpy(dtype=int)) or (np.nan, np.nan))
    bottom.plot(centres, [server for server, _ in shares], marker="o", markersize=3, color="C3", label="5xx share")
    bottom.plot(centres, [client for _, client in shares], marker="s", markersize=3, color="C1", label="4xx share")
    bottom.set_ylabel("share")
    bottom.set_ylim(-0.02, 1.02)
    bottom.legend(fontsize=7)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    bottom.set_xlabel("time (UTC)")
    return _png(plt, fig)


def length_distributions(live: list[str], reference: list[str]) -> bytes:
    plt = pyplot()
    live_lengths, reference_lengths = [len(t) for t in live], [len(t) for t in reference]
    edges = np.histogram_bin_edges(live_lengths + reference_lengths, bins=30)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(reference_lengths, bins=edges, density=True, alpha=0.5, label=f"training ({len(reference)})")
    ax.hist(live_lengths, bins=edges, density=True, alpha=0.5, label=f"live ({len(live)})")
    ax.set_xlabel("input length (characters)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
