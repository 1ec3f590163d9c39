"""Fast when nothing changed: an unchanged re-run of the demo against a cold run, measured in one invocation.

1. A cold run: a fresh FTFLOW_HOME, no Prefect server running (ftflow starts its local one).
2. Unchanged re-runs in that home (every stage cached, the local server reused), `--repeats` times; and the same
   with FTFLOW_PREFECT_SERVER=temporary (Prefect's per-run server, as before the reuse) as the baseline.
3. `ftflow --help` and `ftflow validate` on the demo recipe.

Medians against the targets: re-run 5 s, --help 2 s, validate 2 s. The local server is stopped at the end. Run with
`make bench-rerun`; record the figures in docs/benchmarks.md.

    python bench/rerun.py [--recipe R] [--set k=v ...] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FTFLOW = str(Path(sys.executable).parent / "ftflow")
TARGETS = {"unchanged re-run": 5.0, "ftflow --help": 2.0, "ftflow validate": 2.0}


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([FTFLOW, *args], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"ftflow {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def median_of(args: list[str], env: dict[str, str], repeats: int) -> tuple[float, list[float]]:
    walls = [timed(args, env) for _ in range(repeats)]
    return statistics.median(walls), walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "data_recipes" / "recipes" / "clinical_qa.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ftflow-bench-rerun-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "FTFLOW_"))}
    env |= {"FTFLOW_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    run = ["run", str(args.recipe), *[a for o in args.overrides for a in ("--set", o)]]
    try:
        cold = timed(run, env)
        results = {
            "unchanged re-run": median_of(run, env, args.repeats),
            "unchanged re-run, temporary server (before)": median_of(
                run, env | {"FTFLOW_PREFECT_SERVER": "temporary"}, args.repeats),
            "ftflow --help": median_of(["--help"], env, args.repeats),
            "ftflow validate": median_of(["validate", str(args.recipe)], env, args.repeats),
        }
    finally:
        subprocess.run([FTFLOW, "server", "stop"], env=env, cwd=REPO, capture_output=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"cold run (fresh home, server start included): {cold:.1f} s")
    for name, (median, walls) in results.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  target {target:.0f} s: {'met' if median <= target else 'MISSED'}"
        print(f"{name}: median {median:.2f} s of {', '.join(f'{w:.2f}' for w in walls)}{verdict}")
    before, after = (results[k][0] for k in ("unchanged re-run, temporary server (before)", "unchanged re-run"))
    print(f"re-run speed-up from the reused server: {before / after:.2f}x; cold / re-run: {cold / after:.1f}x")


if __name__ == "__main__":
    main()
