"""How much the RLHF demo's RL step improves on the SFT model it starts from, over seeds.

Runs the chain data_recipes/recipes/clinical_qa.yaml -> clinical_reward.yaml -> clinical_rl.yaml (SFT, a reward
model, GRPO against it and token F1) once per seed (`train.seed` of all three recipes), each in a fresh
FTFLOW_HOME, and prints per seed: the RL step's share of prompts whose sampled answers all scored alike (GRPO learns
nothing from those), the sampled answers' mean reward over the first and the last quarter of its steps, and the
greedy answers to the test prompts scored with the recipe's reward, SFT model against RL policy (the evaluate
stage's `base.mean_reward` and `mean_reward`), with the token-F1 term apart. The smallest figures over the seeds are
what the e2e test's margins are set from (tests/e2e/test_alignment_flows.py).

Processors differ in their numeric kernels (AVX-512 against AVX2), which changes every float the chain computes;
ATEN_CPU_CAPABILITY=avx2 makes torch use the AVX2 kernels on an AVX-512 machine, so both can be measured here
(`make bench-rl` runs both):

    python bench/rl_margin.py --seeds 0 1 2 3 4
    ATEN_CPU_CAPABILITY=avx2 python bench/rl_margin.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "data_recipes" / "recipes"
CHAIN = [RECIPES / "clinical_qa.yaml", RECIPES / "clinical_reward.yaml", RECIPES / "clinical_rl.yaml"]


def run_chain(seed: int) -> dict[str, float]:
    os.environ["FTFLOW_HOME"] = tempfile.mkdtemp(prefix=f"ftflow-bench-rl-{seed}-")
    from flows.chain import chain

    sft, reward, rl = chain([str(p) for p in CHAIN], [f"train.seed={seed}", "monitor.probe_size=2"])
    learnt, scored = rl["stages"]["train"]["metrics"], rl["stages"]["evaluate"]["metrics"]
    return {"sft_exact_match": sft["stages"]["evaluate"]["metrics"]["exact_match"],
            "rm_accuracy": reward["stages"]["evaluate"]["metrics"]["reward_accuracy"],
            "alike": learnt["groups_scored_alike"], "first": learnt["mean_reward_first"],
            "last": learnt["mean_reward_last"], "sft_reward": scored["base.mean_reward"],
            "rl_reward": scored["mean_reward"], "sft_f1": scored["base.reward.reference_f1"],
            "rl_f1": scored["reward.reference_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["FTFLOW_HOME"] = tempfile.mkdtemp(prefix="ftflow-bench-rl-")
    from flows.settings import configure_environment

    configure_environment()
    import torch

    rows = {seed: run_chain(seed) for seed in args.seeds}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), kernels {torch.backends.cpu.get_cpu_capability()}")
    print("| seed | SFT exact match | RM accuracy | prompts scored alike | sampled reward, first -> last quarter | "
          "greedy reward, SFT -> RL | its token F1, SFT -> RL |")
    print("|---|---|---|---|---|---|---|")
    for seed, r in rows.items():
        print(f"| {seed} | {r['sft_exact_match']:.3f} | {r['rm_accuracy']:.3f} | {r['alike']:.1%} | "
              f"{r['first']:.3f} -> {r['last']:.3f} ({r['last'] - r['first']:+.3f}) | "
              f"{r['sft_reward']:.3f} -> {r['rl_reward']:.3f} ({r['rl_reward'] - r['sft_reward']:+.3f}) | "
              f"{r['sft_f1']:.3f} -> {r['rl_f1']:.3f} |")
    rises = [r["last"] - r["first"] for r in rows.values()]
    gains = [r["rl_reward"] - r["sft_reward"] for r in rows.values()]
    print(f"smallest: sampled reward rise {min(rises):+.3f}, greedy reward gain {min(gains):+.3f}; most prompts "
          f"scored alike {max(r['alike'] for r in rows.values()):.1%}")


if __name__ == "__main__":
    main()
