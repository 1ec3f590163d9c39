"""The data card: what the clean/balance stage did to the data, in markdown (an MLflow and a Prefect artifact).

Its statistics are gathered from the written Parquet files a batch and a column at a time, so a card costs no more
memory than cleaning does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ftcore.columns import LABEL_COLUMN
from ftcore.parquet_io import iter_frames, num_rows
from ftcore.registry import Batch

BAR_WIDTH = 30
MARKERS = {"augmented": "made by augmentation", "synthetic": "synthesised by SMOTE (feature space only)"}


@dataclass
class CardStats:
    rows: dict[str, int]
    labels: dict[str, pd.Series]  # per split: label -> rows (empty without a label column)
    lengths: dict[str, np.ndarray]  # train split: text column -> characters per row
    examples: pd.DataFrame  # the first rows of the train split
    reasons: dict[tuple[str, str], list] = field(default_factory=dict)  # (step, pattern) -> [rows, example]
    marked: dict[str, int] = field(default_factory=dict)  # marker column -> train rows flagged


def collect_card_stats(splits: dict[str, Path], quarantine: Path, text_columns: list[str],
                       batch_rows: int) -> CardStats:
    train = splits["train"]
    columns = pq.read_schema(train).names
    stats = CardStats(rows={name: num_rows(path) for name, path in splits.items()}, labels={}, lengths={},
                      examples=next(iter_frames(train, 3), pd.DataFrame()))
    if LABEL_COLUMN in columns:
        stats.labels = {name: _value_counts(path, LABEL_COLUMN, batch_rows) for name, path in splits.items()}
    synthetic = ["synthetic"] if "synthetic" in columns else []  # SMOTE rows have no text: not in the lengths
    for column in text_columns:
        shown = f"raw_{column}" if f"raw_{column}" in columns else column  # the cleaned text, not the template
        frames = (f[~f["synthetic"]] if synthetic else f for f in iter_frames(train, batch_rows, [shown, *synthetic]))
        stats.lengths[shown] = np.concatenate([Batch(f, [shown]).text(shown).str.len().to_numpy() for f in frames]
                                              or [np.zeros(0)])
    for marker in MARKERS:
        if marker in columns:
            stats.marked[marker] = int(sum(f[marker].sum() for f in iter_frames(train, batch_rows, [marker])))
    for frame in iter_frames(quarantine, batch_rows, columns=["step", "reason"]):
        patterns = frame["reason"].str.replace(r"\d+", "#", regex=True)
        for (step, pattern), group in frame.groupby([frame["step"], patterns], sort=False):
            entry = stats.reasons.setdefault((step, pattern), [0, group["reason"].iloc[0]])
            entry[0] += len(group)
    return stats


def _value_counts(path: Path, column: str, batch_rows: int) -> pd.Series:
    counts = [frame[column].astype(str).value_counts() for frame in iter_frames(path, batch_rows, [column])]
    return pd.concat(counts).groupby(level=0).sum() if counts else pd.Series(dtype=int)


def render_data_card(name: str, metrics: dict[str, float], collect_metrics: dict[str, float], stats: CardStats,
                     balance_column: str | None) -> str:
    lines = [f"# Data card: {name}", ""]
    lines += _collect_line(collect_metrics)
    lines += _step_table(metrics)
    lines += _split_table(stats)
    if stats.labels:
        lines += _label_table(stats)
    if balance_column and any(k.startswith(f"{balance_column}.") for k in metrics):
        lines += _balance_table(metrics, balance_column)
    lines += _marked_rows(stats)
    for column, lengths in stats.lengths.items():
        lines += _length_histogram(column, lengths)
    lines += _quarantine_reasons(stats)
    lines += _examples(stats.examples)
    return "\n".join(lines) + "\n"


def _collect_line(collect_metrics: dict[str, float]) -> list[str]:
    if not collect_metrics.get("rows_quarantined"):
        return []
    return [f"Collect read {collect_metrics['rows_in']:.0f} rows and quarantined "
            f"{collect_metrics['rows_quarantined']:.0f} it could not use (malformed lines, unusable values: see "
            f"the collect stage's quarantine); the steps below start from the other "
            f"{collect_metrics['rows_kept']:.0f}.", ""]


def _step_table(metrics: dict[str, float]) -> list[str]:
    steps = [k.removesuffix(".rows_in") for k in metrics if k.endswith(".rows_in")]
    rows = [f"| {s} | {metrics[f'{s}.rows_in']:.0f} | {metrics[f'{s}.rows_kept']:.0f} | "
            f"{metrics[f'{s}.rows_quarantined']:.0f} |" for s in steps]
    return [
        f"**{metrics['rows_in']:.0f} rows in = {metrics['rows_kept']:.0f} kept + "
        f"{metrics['rows_quarantined']:.0f} quarantined.**", "",
        "| step | rows in | kept | quarantined |", "|---|---|---|---|", *rows, "",
    ]


def _split_table(stats: CardStats) -> list[str]:
    return ["| split | rows |", "|---|---|", *(f"| {n} | {rows} |" for n, rows in stats.rows.items()), ""]


def _balance_table(metrics: dict[str, float], column: str) -> list[str]:
    classes = sorted({k.split(".")[1] for k in metrics if k.startswith(f"{column}.") and k.endswith(".before")})
    weights = any(f"{column}.{c}.weight" in metrics for c in classes)
    rows = [f"| {c} | {metrics.get(f'{column}.{c}.before', 0):.0f} | {metrics.get(f'{column}.{c}.after', 0):.0f} |"
            + (f" {metrics.get(f'{column}.{c}.weight', float('nan')):.3f} |" if weights else "") for c in classes]
    header = "| class | before | after |" + (" loss weight |" if weights else "")
    return [f"## `{column}` in the train split, before and after balancing", "", header,
            "|---" * (4 if weights else 3) + "|", *rows, ""]


def _marked_rows(stats: CardStats) -> list[str]:
    lines = [f"- **{n} train rows {MARKERS[marker]}** (column `{marker}` is true on them)"
             for marker, n in stats.marked.items() if n]
    return ["## Rows that are not real data", "", *lines, ""] if lines else []


def _label_table(stats: CardStats) -> list[str]:
    counts = pd.DataFrame(stats.labels).fillna(0).astype(int)
    rows = [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in counts.iterrows()]
    return ["## Labels per split (train after balancing)", "", "| label | " + " | ".join(counts.columns) + " |",
            "|---" * (len(counts.columns) + 1) + "|", *rows, ""]


def _length_histogram(column: str, lengths: np.ndarray, bins: int = 8) -> list[str]:
    if not len(lengths):
        return []
    counts, edges = np.histogram(lengths, bins=bins)
    peak = max(counts.max(), 1)
    rows = [f"| {edges[i]:.0f}–{edges[i + 1]:.0f} | {c} | {'█' * round(BAR_WIDTH * c / peak)} |"
            for i, c in enumerate(counts)]
    return [f"## Length of `{column}` in the train split (characters)", "",
            f"median {np.median(lengths):.0f}, 95th percentile {np.percentile(lengths, 95):.0f}, max {lengths.max()}",
            "", "| characters | rows | |", "|---|---|---|", *rows, ""]


def _quarantine_reasons(stats: CardStats, top: int = 8) -> list[str]:
    """Reasons grouped by their pattern (numbers collapsed: "duplicate of row #"), with one real example each."""
    if not stats.reasons:
        return ["## Quarantine", "", "Nothing was quarantined.", ""]
    grouped = sorted(stats.reasons.items(), key=lambda item: -item[1][0])[:top]
    rows = [f"| {step} | {_cell(pattern)} | {n} | {_cell(example)} |" for (step, pattern), (n, example) in grouped]
    return ["## Quarantine reasons", "", "| step | reason | rows | example |", "|---|---|---|---|", *rows, ""]


def _examples(frame: pd.DataFrame) -> list[str]:
    shown = [c for c in ("raw_prompt", "raw_completion") if c in frame] or \
        [c for c in frame.columns if c not in ("source", "source_row", "embedding")]
    rows = [" | ".join(_cell(str(v)) for v in r) for r in frame[shown].itertuples(index=False)]
    return ["## Examples (train)", "", "| " + " | ".join(shown) + " |", "|---" * len(shown) + "|",
            *(f"| {r} |" for r in rows), ""]


def _cell(text: str, width: int = 100) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
