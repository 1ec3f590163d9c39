"""`make compat`: run the whole support matrix (tests/models/matrix.py) and write docs/models.md from its results.

    python -m tests.models.compat [--families qwen2 gpt2] [--methods lora full] [--objectives sft] [--jobs N]
                                  [--results FILE] [--resume] [--render-only]

Cells run in --jobs worker processes (default: one per CPU, one thread each); each cell's result is appended to the
results file (JSON lines) as it ends, so an interrupted run can go on with --resume (cells already in the file are
skipped). The table is generated from that file, never typed by hand. Exit 1 when a cell failed (a refusal that
only came at run time counts as a failure: `ftflow validate` should have given it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.models.matrix import METHODS, OBJECTIVES, objectives_of, run_cell
from tests.models.zoo import BY_NAME, FAMILIES, fetch_vocabularies, folder

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "models.md"
RESULTS = REPO / "bench" / "results" / "compat.jsonl"


def cells(families: list[str], methods: list[str], objectives: list[str]) -> list[tuple[str, str, str]]:
    return [(family, method, objective) for family in families for objective in objectives_of(BY_NAME[family])
            if objective in objectives for method in methods]


def read_results(path: Path) -> dict[tuple[str, str, str], dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["family"], row["method"], row["objective"]): row for row in rows}


def run(families: list[str], methods: list[str], objectives: list[str], results: Path, jobs: int) -> None:
    """Run the cells not in `results` in `jobs` worker processes, appending each result as it ends."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    done = read_results(results)
    todo = [cell for cell in cells(families, methods, objectives) if cell not in done]
    results.parent.mkdir(parents=True, exist_ok=True)
    for name in families:
        folder(name)  # built once, before the workers start
    started = time.perf_counter()
    # Spawned, not forked: this process has imported torch to build the folders. One thread each, so the workers
    # share the cores without oversubscribing them, and each cell's numbers do not depend on the machine's size.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_setup,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_isolated_cell, *cell) for cell in todo]
        for i, future in enumerate(as_completed(futures), 1):
            cell = future.result()
            with results.open("a") as out:
                out.write(json.dumps(cell.as_dict()) + "\n")
            elapsed = time.perf_counter() - started
            print(f"[{i}/{len(todo)} {elapsed / 60:.0f} min] {cell.family} {cell.method} {cell.objective}: "
                  f"{cell.status} {cell.seconds:.1f} s {cell.reason}", flush=True)


def _worker_setup(threads: int) -> None:
    """A worker's environment, before it imports torch: the tests' offline settings and its thread count."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tests.conftest  # noqa: F401  HF_HUB_OFFLINE, a temporary PREFECT_HOME, ftflow's own settings


def _isolated_cell(family: str, method: str, objective: str):
    """One cell in a fresh folder with its own FTFLOW_HOME, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ftflow-compat-"))
    os.environ["FTFLOW_HOME"] = str(root / "home")
    try:
        return run_cell(family, method, objective, root / "cell")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=[f.name for f in FAMILIES], choices=list(BY_NAME))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep the results file's cells and run the others")
    parser.add_argument("--render-only", action="store_true", help="write docs/models.md from the results file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cells run at once (default: CPUs)")
    args = parser.parse_args(argv)
    if not (args.resume or args.render_only) and args.results.exists():
        args.results.unlink()
    if not args.render_only:
        fetch_vocabularies()
        run(args.families, args.methods, args.objectives, args.results, args.jobs)
    from tests.models.report import render

    results = read_results(args.results)
    DOC.write_text(render(results, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU"))
    failed = [row for row in results.values() if row["status"] == "failed"]
    print(f"{len(results)} cells: {sum(r['status'] == 'passed' for r in results.values())} passed, "
          f"{sum(r['status'] == 'refused' for r in results.values())} refused, {len(failed)} failed; wrote {DOC}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
