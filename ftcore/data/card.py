"""The data card: what the clean/balance stage did to the data, in markdown (an MLflow and a Prefect artifact)."""

from __future__ import annotations

import numpy as np
import pandas as pd

BAR_WIDTH = 30


def render_data_card(name: str, metrics: dict[str, float], splits: dict[str, pd.DataFrame],
                     quarantine: pd.DataFrame, text_columns: list[str], balance_column: str | None) -> str:
    lines = [f"# Data card: {name}", ""]
    lines += _step_table(metrics)
    lines += _split_table(splits)
    if "label" in splits["train"]:
        lines += _label_table(splits)
    if balance_column and any(k.startswith(f"{balance_column}.") for k in metrics):
        lines += _balance_table(metrics, balance_column)
    for column in text_columns:
        # Lengths of the cleaned text itself, not of the prompt template around it.
        lines += _length_histogram(splits["train"], f"raw_{column}" if f"raw_{column}" in splits["train"] else column)
    lines += _quarantine_reasons(quarantine)
    lines += _examples(splits["train"], text_columns)
    return "\n".join(lines) + "\n"


def _step_table(metrics: dict[str, float]) -> list[str]:
    steps = [k.removesuffix(".rows_in") for k in metrics if k.endswith(".rows_in")]
    rows = [f"| {s} | {metrics[f'{s}.rows_in']:.0f} | {metrics[f'{s}.rows_kept']:.0f} | "
            f"{metrics[f'{s}.rows_quarantined']:.0f} |" for s in steps]
    return [
        f"**{metrics['rows_in']:.0f} rows in = {metrics['rows_kept']:.0f} kept + "
        f"{metrics['rows_quarantined']:.0f} quarantined.**", "",
        "| step | rows in | kept | quarantined |", "|---|---|---|---|", *rows, "",
    ]


def _split_table(splits: dict[str, pd.DataFrame]) -> list[str]:
    return ["| split | rows |", "|---|---|", *(f"| {n} | {len(f)} |" for n, f in splits.items()), ""]


def _balance_table(metrics: dict[str, float], column: str) -> list[str]:
    classes = sorted({k.split(".")[1] for k in metrics if k.startswith(f"{column}.") and k.endswith(".before")})
    rows = [f"| {c} | {metrics.get(f'{column}.{c}.before', 0):.0f} | {metrics.get(f'{column}.{c}.after', 0):.0f} |"
            for c in classes]
    return [f"## `{column}` in the train split, before and after balancing", "",
            "| class | before | after |", "|---|---|---|", *rows, ""]


def _label_table(splits: dict[str, pd.DataFrame]) -> list[str]:
    counts = pd.DataFrame({n: f["label"].value_counts() for n, f in splits.items()}).fillna(0).astype(int)
    rows = [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in counts.iterrows()]
    return ["## Labels per split (train after balancing)", "", "| label | " + " | ".join(counts.columns) + " |",
            "|---" * (len(counts.columns) + 1) + "|", *rows, ""]


def _length_histogram(frame: pd.DataFrame, column: str, bins: int = 8) -> list[str]:
    lengths = frame[column].astype(str).str.len().to_numpy()
    if not len(lengths):
        return []
    counts, edges = np.histogram(lengths, bins=bins)
    peak = max(counts.max(), 1)
    rows = [f"| {edges[i]:.0f}–{edges[i + 1]:.0f} | {c} | {'█' * round(BAR_WIDTH * c / peak)} |"
            for i, c in enumerate(counts)]
    return [f"## Length of `{column}` in the train split (characters)", "",
            f"median {np.median(lengths):.0f}, 95th percentile {np.percentile(lengths, 95):.0f}, max {lengths.max()}",
            "", "| characters | rows | |", "|---|---|---|", *rows, ""]


def _quarantine_reasons(quarantine: pd.DataFrame, top: int = 8) -> list[str]:
    """Reasons grouped by their pattern (numbers collapsed: "duplicate of row #"), with one real example each."""
    if quarantine.empty:
        return ["## Quarantine", "", "Nothing was quarantined.", ""]
    patterns = quarantine.assign(pattern=quarantine["reason"].str.replace(r"\d+", "#", regex=True))
    grouped = patterns.groupby(["step", "pattern"]).agg(rows=("reason", "size"), example=("reason", "first"))
    grouped = grouped.sort_values("rows", ascending=False).head(top)
    rows = [f"| {step} | {_cell(pattern)} | {g.rows} | {_cell(g.example)} |"
            for (step, pattern), g in grouped.iterrows()]
    return ["## Quarantine reasons", "", "| step | reason | rows | example |", "|---|---|---|---|", *rows, ""]


def _examples(frame: pd.DataFrame, columns: list[str], n: int = 3) -> list[str]:
    shown = [c for c in ("raw_prompt", "raw_completion") if c in frame] or [*columns, *(["label"] if "label" in
                                                                                        frame else [])]
    rows = [" | ".join(_cell(str(v)) for v in r) for r in frame[shown].head(n).itertuples(index=False)]
    return ["## Examples (train)", "", "| " + " | ".join(shown) + " |", "|---" * len(shown) + "|",
            *(f"| {r} |" for r in rows), ""]


def _cell(text: str, width: int = 100) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
