"""ftflow versus a plain TRL script on the same work, measured in one invocation.

1. `ftflow run` on the demo recipe in a fresh FTFLOW_HOME (all seven stages, Prefect + MLflow included).
2. bench/plain_trl_sft.py on the same cleaned train split, the same base weights and initial adapter (taken from
   ftflow's init stage), and the same hyper-parameters.

Prints the ratio of ftflow's train-stage time to the plain script's time, and the whole-pipeline overhead: ftflow's
wall-clock minus the plain script's. Run with `make bench`; record the figures in docs/benchmarks.md.

    python bench/pipeline_overhead.py [--recipe R] [--set k=v ...] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_ftflow(recipe: Path, overrides: list[str], home: Path) -> tuple[dict, float]:
    env = {**os.environ, "FTFLOW_HOME": str(home)}
    env.pop("PREFECT_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "ftflow"), "run", str(recipe), "--json", *[arg for o in overrides for arg in ("--set", o)]]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"ftflow run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):]), wall


def run_plain(home: Path, recipe: Path, overrides: list[str], out: Path) -> tuple[dict, float]:
    """The plain script on ftflow's own init output and cleaned split (the only ones in this fresh home)."""
    from ftcore.recipe import load_recipe

    train_cfg = load_recipe(recipe, overrides).train
    init_dir = next((home / "artifacts" / "init").iterdir())
    clean_dir = next((home / "artifacts" / "clean_balance").iterdir())
    cmd = [
        sys.executable, str(REPO / "bench" / "plain_trl_sft.py"),
        "--base", str(init_dir / "base"), "--adapter", str(init_dir / "adapter"),
        "--train", str(clean_dir / "train.parquet"), "--out", str(out),
        "--hparams", json.dumps(train_cfg.model_dump()),
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"plain TRL script failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "data_recipes" / "recipes" / "clinical_qa.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    rows = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ftflow-bench-") as tmp:
            home = Path(tmp) / "home"
            summary, ftflow_wall = run_ftflow(args.recipe, args.overrides, home)
            plain, plain_wall = run_plain(home, args.recipe, args.overrides, Path(tmp) / "plain")
        train_stage = summary["stages"]["train"]
        rows.append({
            "ftflow_wall_s": ftflow_wall,
            "ftflow_train_stage_s": train_stage["duration_s"],
            "ftflow_train_runtime_s": train_stage["metrics"]["runtime_s"],
            "plain_total_s": plain["total_s"],
            "plain_imports_s": plain["imports_s"],
            "plain_train_s": plain["train_s"],
            "plain_wall_s": plain_wall,
            "steps": (train_stage["metrics"]["steps"], plain["steps"]),
            "train_loss": (train_stage["metrics"]["train_loss"], plain["train_loss"]),
        })
        print(f"repeat {i + 1}/{args.repeats}: " + json.dumps(rows[-1]), flush=True)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if not isinstance(rows[0][k], tuple)}
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"recipe: {args.recipe.relative_to(REPO)} {' '.join(args.overrides)}  (median of {args.repeats})")
    print(f"ftflow train stage (load, tokenize, train, validate, merge, save): {med['ftflow_train_stage_s']:.1f} s")
    print(f"plain TRL script (load, tokenize, train, save): {med['plain_total_s']:.1f} s "
          f"(+ {med['plain_imports_s']:.1f} s of imports, not counted)")
    print(f"  trainer.train() alone: ftflow {med['ftflow_train_runtime_s']:.1f} s, plain {med['plain_train_s']:.1f} s")
    print(f"train-stage ratio ftflow/plain: {med['ftflow_train_stage_s'] / med['plain_total_s']:.3f}")
    print(f"whole pipeline: ftflow {med['ftflow_wall_s']:.1f} s wall vs plain script {med['plain_wall_s']:.1f} s "
          f"-> overhead {med['ftflow_wall_s'] - med['plain_wall_s']:.1f} s (7 stages, Prefect server, MLflow)")


if __name__ == "__main__":
    main()
