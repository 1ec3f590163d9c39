"""`ftflow tune` measured against its baselines, each arm a real `ftflow tune` (or `ftflow run`) process in a fresh
FTFLOW_HOME on ftflow's local Prefect server:

- pruning: the recipe's search with the median pruner against the same search without one (same sampler, seed and
  budget): CPU seconds over all trials (each trial's process CPU time), and the best validation value each found.
  Target: at least 40% less compute for a best value within noise.
- search: the tuned configuration (the recipe's sampler, pruned) against the recipe's own values (`ftflow run`) and
  against a random search of the same budget (random sampler, pruned), on the held-out test split, with the
  evaluate stage's bootstrap intervals; with `--seeds`, once per seed (train.seed: the data order, the initial
  weights and the sampler's draws) and the mean over them.
- workers: the same search with 2 worker processes against 1 (no pruner, random sampler: the same kind of trials in
  both), trials per hour from the first trial's start to the last one's end.
- resume: the search killed (SIGKILL, the whole process group) once two trials have finished and a third runs, then
  started again: finished trials run again (target 0), and whether the killed trial resumed from a checkpoint.

    python bench/tune.py [--suite pruning search workers resume] [--trials N] [--recipe R] [--set k=v ...]
                         [--seeds S ...]

Run with `make bench-tune` (the demo) and `make bench-tune-spam` (SMS spam, search only); record the figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FTFLOW = str(Path(sys.executable).parent / "ftflow")
DEMO = REPO / "data_recipes" / "recipes" / "clinical_qa.yaml"


class Bench:
    def __init__(self, recipe: Path, overrides: list[str], trials: int):
        self.recipe, self.overrides, self.trials = recipe, overrides, trials
        self.root = Path(tempfile.mkdtemp(prefix="ftflow-bench-tune-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "FTFLOW_"))}
        self.env = env | {"HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(self.root / "prefect")}

    def command(self, verb: str, arm: str, *args: str) -> tuple[list[str], dict[str, str]]:
        sets = [a for o in self.overrides for a in ("--set", o)]
        return [FTFLOW, verb, str(self.recipe), *sets, *args], self.env | {"FTFLOW_HOME": str(self.root / arm)}

    def tune(self, arm: str, *args: str) -> dict:
        command, env = self.command("tune", arm, "--json", "--trials", str(self.trials), *args)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{arm}: ftflow tune failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout)
        result["wall_s"] = time.perf_counter() - started
        return result

    def stop(self) -> None:
        subprocess.run([FTFLOW, "server", "stop"], env=self.env, cwd=REPO, capture_output=True)


def cpu_s(result: dict) -> float:
    return sum(row["cpu_s"] or 0.0 for row in result["trials"])


def best_value(result: dict) -> float | None:
    return result["best"]["values"][0] if result["best"] else None


def test_metric(summary: dict, metric: str) -> str:
    metrics = summary["stages"]["evaluate"]["metrics"]
    low, high = metrics.get(f"{metric}.ci_low"), metrics.get(f"{metric}.ci_high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
    return f"{metrics[metric]:.3f}{interval}"


def states(result: dict) -> str:
    return ", ".join(f"{n} {s}" for s, n in result["counts"].items() if n)


def pruning(bench: Bench, arms: dict) -> None:
    pruned = arms.setdefault("tpe+median", bench.tune("tpe+median", "--set", "tune.pruner=median"))
    full = bench.tune("tpe+none", "--set", "tune.pruner=none")
    metric = pruned["objectives"][0]["metric"]
    print(f"pruning ({bench.trials} trials each, validation {metric}):")
    for name, result in (("median pruner", pruned), ("no pruner", full)):
        print(f"  {name}: {cpu_s(result):.0f} CPU s over the trials ({states(result)}), best {best_value(result)}")
    saved = 1 - cpu_s(pruned) / cpu_s(full)
    print(f"  compute saved by pruning: {saved:.0%} (target 40%: {'met' if saved >= 0.4 else 'MISSED'})")


def search(bench: Bench, arms: dict) -> dict[str, float]:
    tuned = arms.setdefault("tpe+median", bench.tune("tpe+median", "--set", "tune.pruner=median"))
    random = bench.tune("random+median", "--set", "tune.sampler=random", "--set", "tune.sampler_startup_trials=null",
                        "--set", "tune.pruner=median")
    command, env = bench.command("run", "defaults", "--json")
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"defaults: ftflow run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    defaults = json.loads(done.stdout)
    metric = tuned["objectives"][0]["metric"]
    print(f"search (test split, {metric} with its 95% bootstrap interval):")
    print(f"  the recipe's own values: {test_metric(defaults, metric)}")
    for name, result in (("tuned (the recipe's sampler, pruned)", tuned), ("random search, same budget", random)):
        chosen = " ".join(result["best"]["overrides"]) if result["best"] else "-"
        print(f"  {name}: {test_metric(result['final'], metric)}  (trial {result['best']['number']}: {chosen}; "
              f"validation {best_value(result)}; {states(result)}; {cpu_s(result):.0f} CPU s)")
    scored = {"defaults": defaults, "tuned": tuned["final"], "random": random["final"]}
    return {arm: summary["stages"]["evaluate"]["metrics"][metric] for arm, summary in scored.items()}


def trials_per_hour(result: dict) -> float:
    rows = [r for r in result["trials"] if r["started"] and r["ended"]]
    first = min(datetime.fromisoformat(r["started"]) for r in rows)
    last = max(datetime.fromisoformat(r["ended"]) for r in rows)
    return len(rows) / (last - first).total_seconds() * 3600


def workers(bench: Bench, arms: dict) -> None:
    same = ("--set", "tune.pruner=none", "--set", "tune.sampler=random")
    one = bench.tune("1 worker", *same)
    two = bench.tune("2 workers", *same, "--workers", "2")
    print(f"workers ({bench.trials} trials, no pruner, random sampler; {os.cpu_count()} cores):")
    for name, result in (("1 worker", one), ("2 workers", two)):
        print(f"  {name}: {trials_per_hour(result):.0f} trials/hour, {cpu_s(result):.0f} CPU s over the trials")
    print(f"  2 workers / 1: {trials_per_hour(two) / trials_per_hour(one):.2f}x")


def resume(bench: Bench, arms: dict) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    command, env = bench.command("tune", "resume", "--json", "--trials", str(bench.trials), "--set",
                                 "tune.pruner=none")
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    storage, done = f"sqlite:///{bench.root / 'resume' / 'tune.db'}", []
    while first.poll() is None:
        time.sleep(2)
        try:
            study = optuna.load_study(study_name=None, storage=storage)
        except (KeyError, ValueError, RuntimeError):
            continue
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(done) >= 2 and any(t.state.name == "RUNNING" for t in study.trials):
            time.sleep(8)  # into the running trial's training
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait()
    before = len(done)
    result = bench.tune("resume", "--set", "tune.pruner=none")
    complete = [json.dumps(r["params"], sort_keys=True) for r in result["trials"]
                if r["state"] == "complete" and r["duplicate_of"] is None]
    retried = [r for r in result["trials"] if r["retry_of"] is not None]
    print(f"resume: killed with {before} trials finished; after the restart {len(complete)} finished, "
          f"{len(complete) - len(set(complete))} of them run twice (target 0); {len(retried)} killed trial(s) "
          f"run again as {', '.join(str(r['number']) for r in retried) or '-'}")


SUITES = {"pruning": pruning, "search": search, "workers": workers, "resume": resume}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--recipe", type=Path, default=DEMO)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", help="run the suites once per train.seed (default: the "
                                                             "recipe's)")
    args = parser.parse_args()
    args.recipe = args.recipe.resolve()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"recipe {args.recipe.relative_to(REPO)} {' '.join(args.overrides)}")
    searched: list[dict[str, float]] = []
    for seed in args.seeds or [None]:
        bench = Bench(args.recipe, [*args.overrides, *([f"train.seed={seed}"] if seed is not None else [])],
                      args.trials)
        if seed is not None:
            print(f"seed {seed}:")
        arms: dict[str, dict] = {}
        try:
            for suite in args.suite:
                started = time.perf_counter()
                scores = SUITES[suite](bench, arms)
                searched += [scores] if suite == "search" else []
                print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        finally:
            bench.stop()
    if len(searched) > 1:
        means = {arm: sum(s[arm] for s in searched) / len(searched) for arm in searched[0]}
        wins = sum(s["tuned"] > s["defaults"] for s in searched)
        print(f"search over {len(searched)} seeds, mean test score: " + ", ".join(f"{a} {m:.4f}" for a, m in
                                                                               means.items())
              + f"; tuned above the defaults in {wins} of {len(searched)}")


if __name__ == "__main__":
    main()
