"""`ftflow quarantine`: the rows a run's cleaning steps set aside, with the step and the reason, for the data engineer
who wants to see them without finding the Parquet file. `register_commands` adds it to flows/cli.py's app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_shared import configure, console, fail
from ftcore.paths import home

# Columns that say where a row came from rather than what it says: shown as `source:line`, not as text.
PLACE_COLUMNS = ("row", "source", "source_row", "holdout", "step", "reason")
EXCERPT = 80  # characters of each text column shown


def register_commands(app: typer.Typer) -> None:
    app.command()(quarantine)


def quarantine(
    run_id: Annotated[str, typer.Argument(help="An ftflow run id (`ftflow run` prints its summary's path).")],
    step: Annotated[str | None, typer.Option(help="Only the rows this cleaning step set aside.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows shown at most.")] = 20,
) -> None:
    """Print the rows RUN_ID's cleaning steps quarantined: the step, the reason, where the row came from, its text."""
    import pandas as pd

    configure()
    rows = pd.read_parquet(quarantine_file(run_id))
    counts = rows["step"].value_counts()
    if step is not None:
        if step not in counts:
            fail(f"--step {step}: it quarantined no row in run {run_id}; steps that did: "
                 f"{', '.join(f'{s} ({n})' for s, n in counts.items()) or 'none'}")
        rows = rows[rows["step"] == step]
    for _, row in rows.head(limit).iterrows():
        console.print(describe_row(row), highlight=False, soft_wrap=True, markup=False)
    shown = min(limit, len(rows))
    console.print(f"{shown} of {len(rows)} quarantined rows shown" + (f" (step {step})" if step else "") +
                  f"; by step: {', '.join(f'{s} {n}' for s, n in counts.items()) or 'none'}", highlight=False,
                  soft_wrap=True)


def quarantine_file(run_id: str) -> Path:
    """The quarantine Parquet of the run's clean_balance stage, from its summary.json."""
    summary_path = home() / "runs" / run_id / "summary.json"
    if not summary_path.is_file():
        fail(f"run {run_id}: no such ftflow run ({summary_path} is missing); `ftflow run` prints the summary's path")
    stage = json.loads(summary_path.read_text())["stages"]["clean_balance"]
    path = stage["artifacts"].get("quarantine")
    if stage["status"] not in ("completed", "cached") or path is None or not Path(path).is_file():
        fail(f"run {run_id}: its clean_balance stage has no quarantine (status {stage['status']}); run the recipe "
             "with `--until clean_balance` first")
    return Path(path)


def describe_row(row) -> str:
    """`step: reason  source:line  column="text…"`: one line per quarantined row."""
    texts = [f"{column}={_excerpt(value)}" for column, value in row.items()
             if column not in PLACE_COLUMNS and isinstance(value, str)]
    place = f"{row.get('source', '?')}:{row.get('source_row', '?')}"
    return f"{row['step']}: {row['reason']}  {place}  {'  '.join(texts)}"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…", ensure_ascii=False)
