"""Forgetting with and without the continual-learning mitigations, measured in one invocation.

The shipped demo (data_recipes/recipes/continual_a.yaml, continual_b.yaml): a scratch Llama with LoRA learns task
A (half of the clinical abbreviations) and becomes champion; then task B (the other half) is learnt from that
champion once plainly (the baseline: continual.replay=0) and once per mitigation. Prints, per run, task A's exact
match and perplexity after learning B, `forgetting.exact_match`, task B's exact match, and the forgetting as a
ratio of the baseline's. Run with `make bench-continual`; record the figures in docs/continual.md.

    python bench/continual.py
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "data_recipes" / "recipes"
QUIET = ["monitor.probe_size=2"]
RUNS = {
    "no replay (baseline)": ["continual.replay=0"],
    "replay 0.3": ["continual.replay=0.3"],
    "l2sp, weight 0.01": ["continual.replay=0", "continual.regularizer={method: l2sp, weight: 0.01}"],
    "l2sp, weight 0.1": ["continual.replay=0", "continual.regularizer={method: l2sp, weight: 0.1}"],
    "ewc, weight 0.01": ["continual.replay=0", "continual.regularizer={method: ewc, weight: 0.01}"],
    "ewc, weight 0.1": ["continual.replay=0", "continual.regularizer={method: ewc, weight: 0.1}"],
}


def main() -> None:
    os.environ["FTFLOW_HOME"] = tempfile.mkdtemp(prefix="ftflow-bench-continual-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from flows.settings import configure_environment

    configure_environment()
    from flows.finetune import finetune

    first = finetune(str(RECIPES / "continual_a.yaml"), QUIET)
    print(f"task A learnt: version {first['model']['version']}, exact match "
          f"{first['stages']['evaluate']['metrics']['exact_match']:.3f}")
    rows = {}
    for name, overrides in RUNS.items():
        summary = finetune(str(RECIPES / "continual_b.yaml"), [*QUIET, "model.version=1", *overrides])
        rows[name] = summary["stages"]["evaluate"]["metrics"]
    plain = rows["no replay (baseline)"]
    baseline = plain["forgetting.exact_match"] or float("nan")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| task B run | task A exact match | forgetting.exact_match | x baseline | task A perplexity | "
          "task B exact match |")
    print("|---|---|---|---|---|---|")
    for name, e in rows.items():
        print(f"| {name} | {e['retained.exact_match']:.3f} | {e['forgetting.exact_match']:.3f} | "
              f"{e['forgetting.exact_match'] / baseline:.2f} | {e['retained.perplexity']:.2f} | "
              f"{e['exact_match']:.3f} |")
    print(f"(task A before learning B: exact match {plain['retained.base.exact_match']:.3f}, perplexity "
          f"{plain['retained.base.perplexity']:.2f})")


if __name__ == "__main__":
    main()
