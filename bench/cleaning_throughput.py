"""Rows per second of the clean stage versus a naive per-row loop doing the same steps, in one run.

Both run the cleaning steps of `data_recipes/recipes/shared/medquad_qa.yaml` on the real MedQuAD sample in
../shared/data:

- **ftflow**: `clean_balance_stage`, the clean stage itself (batches through every step, then the split, the
  data card and the Parquet files), timed from the collected table to the finished output folder.
- **naive loop**: for each row, each step's own function on a one-row batch (stateful steps keep their state
  across rows, so deduplication decides exactly as in the stage) - what applying the same steps row by row costs.

Both must keep and quarantine the same rows; the script checks that before printing the ratio.

    python bench/cleaning_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from ftcore.columns import TEXT_COLUMNS
from ftcore.data.clean import apply_steps, clean_balance_stage, plan_steps
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.jobs import clean_job
from ftcore.recipe import load_recipe
from ftcore.registry import STEPS, Batch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "data_recipes" / "recipes" / "shared" / "medquad_qa.yaml"


def naive_loop(rows: pd.DataFrame, plan, text_columns: list[str]) -> tuple[list[int], int]:
    """Every step on every row, one row at a time. Returns the kept row numbers and the quarantined count."""
    steps = [(STEPS.get(s.name), STEPS.get(s.name).params.model_validate(s.params)) for s in plan]
    states: list[dict] = [{} for _ in plan]
    kept, quarantined = [], 0
    for index in rows.index:
        row = rows.loc[[index]]
        for (registered, params), state in zip(steps, states, strict=True):
            row = registered.fn(Batch(row, text_columns, state), params).kept
            if row.empty:
                quarantined += 1
                break
        else:
            kept.append(index)
    return kept, quarantined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    recipe = load_recipe(RECIPE)
    text_columns = TEXT_COLUMNS[recipe.data.format]
    plan = plan_steps(recipe.clean.steps)
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-clean-") as tmp:
        collected = collect_stage(CollectJob(data=recipe.data, sources={}), Path(tmp) / "collected")
        rows = pd.read_parquet(collected.splits["all"])
        apply_steps(rows.head(50), plan, text_columns, {})  # warm-up: imports, spaCy pipelines, detectors
        print(f"{len(rows)} MedQuAD rows; steps: {', '.join(s.label for s in plan)}")
        print(f"{platform.machine()}, {platform.python_version()}, {sys.platform}")
        ratios = []
        for repeat in range(1, args.repeats + 1):
            started = time.perf_counter()
            out = clean_balance_stage(clean_job(recipe, collected), Path(tmp) / f"out{repeat}")
            stage_s = time.perf_counter() - started
            started = time.perf_counter()
            kept, quarantined = naive_loop(rows, plan, text_columns)
            naive_s = time.perf_counter() - started
            if (len(kept), quarantined) != (out.metrics["rows_kept"], out.metrics["rows_quarantined"]):
                sys.exit(f"outputs differ: stage kept {out.metrics['rows_kept']}, loop kept {len(kept)}")
            ratios.append(naive_s / stage_s)
            print(f"repeat {repeat}: clean stage {len(rows) / stage_s:8.0f} rows/s ({stage_s:.2f} s)   "
                  f"naive loop {len(rows) / naive_s:6.0f} rows/s ({naive_s:.2f} s)   ratio {ratios[-1]:.1f}x")
    print(f"median speed-up of the clean stage over the naive loop: {statistics.median(ratios):.1f}x "
          f"(target >= 3x); both kept {len(kept)} and quarantined {quarantined} rows")


if __name__ == "__main__":
    main()
