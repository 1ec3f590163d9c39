"""`make compat`: run the whole support matrix (tests/models/matrix.py) and write docs/models.md from its results.

    python -m tests.models.compat [--families qwen2 gpt2] [--methods lora full] [--results FILE] [--resume]
                                  [--render-only]

Cells run one after another in this process; each cell's result is appended to the results file (JSON lines) as it
ends, so an interrupted run can go on with --resume (cells already in the file are skipped). The table is generated from
that file and the support rules, never typed by hand. Exit 1 when a cell failed, or when a refused cell's reason is
not the one the rules give.
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

from tests.models.matrix import METHODS, objectives_of, run_cell
from tests.models.zoo import BY_NAME, FAMILIES, fetch_vocabularies, folder

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "models.md"
RESULTS = REPO / "bench" / "results" / "compat.jsonl"


def cells(families: list[str], methods: list[str]) -> list[tuple[str, str, str]]:
    return [(family, method, objective) for family in families for objective in objectives_of(BY_NAME[family])
            for method in methods]


def read_results(path: Path) -> dict[tuple[str, str, str], dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["family"], row["method"], row["objective"]): row for row in rows}


def run(families: list[str], methods: list[str], results: Path) -> None:
    done = read_results(results)
    todo = [cell for cell in cells(families, methods) if cell not in done]
    results.parent.mkdir(parents=True, exist_ok=True)
    for name in families:
        folder(name)  # built before the clock of its first cell starts
    started = time.perf_counter()
    for i, (family, method, objective) in enumerate(todo, 1):
        root = Path(tempfile.mkdtemp(prefix="ftflow-compat-"))
        os.environ["FTFLOW_HOME"] = str(root / "home")
        try:
            cell = run_cell(family, method, objective, root / "cell")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        with results.open("a") as out:
            out.write(json.dumps(cell.as_dict()) + "\n")
        elapsed = time.perf_counter() - started
        print(f"[{i}/{len(todo)} {elapsed / 60:.0f} min] {family} {method} {objective}: {cell.status} "
              f"{cell.seconds:.1f} s {cell.reason}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=[f.name for f in FAMILIES], choices=list(BY_NAME))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep the results file's cells and run the others")
    parser.add_argument("--render-only", action="store_true", help="write docs/models.md from the results file")
    args = parser.parse_args(argv)
    if not (args.resume or args.render_only) and args.results.exists():
        args.results.unlink()
    if not args.render_only:
        fetch_vocabularies()
        run(args.families, args.methods, args.results)
    from tests.models.report import render

    results = read_results(args.results)
    DOC.write_text(render(results, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU"))
    failed = [row for row in results.values() if row["status"] == "failed"]
    print(f"{len(results)} cells: {sum(r['status'] == 'passed' for r in results.values())} passed, "
          f"{sum(r['status'] == 'refused' for r in results.values())} refused, {len(failed)} failed; wrote {DOC}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
