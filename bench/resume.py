"""What a crash costs the train stage: a run killed with SIGKILL halfway and run again (it resumes from its last
complete checkpoint), against an uninterrupted run of the same work with the same seed.

Each repeat, in fresh processes on one prepared base and dataset (the demo recipe's data and model, 25 epochs):
1. an uninterrupted `train_stage`;
2. the same call in a new process, killed with SIGKILL when it has done 50% of (1)'s steps;
3. the same call again in a new process: it resumes from the last complete checkpoint and finishes.

Times are those of the `train_stage` call (loading the model and data, training, writing the output); the library
imports are done before the clock starts in every process, as a Prefect retry runs in the process that already
imported them. Prints (2 + 3) / 1 per repeat and the median (target <= 1.15), in wall-clock time and in the
processes' CPU time (which other load on a shared machine disturbs far less), and checks that the resumed run ends
with the uninterrupted run's loss. Linux only (reads /proc). Record the figures in docs/benchmarks.md.

    python bench/resume.py [--recipe R] [--set k=v ...] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data_recipes" / "recipes" / "clinical_qa.yaml"
# The demo's 15 epochs train in ~13 s on 2 quiet cores; 25 (775 steps) make an uninterrupted run last over 20 s.
DEFAULT_OVERRIDES = ["train.epochs=25"]


def prepare(recipe: Path, overrides: list[str], root: Path) -> Path:
    """The stages before train, run once; returns the JSON file every training process reads its inputs from."""
    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import CollectJob, collect_stage
    from ftcore.jobs import clean_job
    from ftcore.models.init import InitJob, init_stage
    from ftcore.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    collected = collect_stage(CollectJob(data=loaded.data, sources={}), root / "collect")
    dataset = clean_balance_stage(clean_job(loaded, collected), root / "clean")
    base = init_stage(InitJob(model=loaded.model, method=loaded.method, dataset=dataset), root / "init")
    inputs = root / "inputs.json"
    inputs.write_text(json.dumps({"base": base.model_dump(mode="json"), "dataset": dataset.model_dump(mode="json"),
                                  "train": loaded.train.model_dump(mode="json")}))
    return inputs


def train_child(inputs: Path, out_dir: Path, report: Path) -> None:
    """One training process: imports first, then the timed `train_stage` call; the start time goes to `report` before
    training (so a killed process leaves it) and the result after. The step reached is written to `<report>.step`
    after every step (in every run, so that all pay the same), for the parent to kill it at a given step."""
    import peft  # noqa: F401
    import trl  # noqa: F401
    from transformers import TrainerCallback

    from ftcore.outputs import DatasetOutput, ModelOutput
    from ftcore.training import train
    from ftcore.training.config import TrainConfig
    from ftcore.training.jobs import TrainJob

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            report.with_suffix(".step").write_text(str(state.global_step))

    spec = json.loads(inputs.read_text())
    started, started_cpu = time.time(), time.process_time()
    report.write_text(json.dumps({"started": started, "started_cpu": started_cpu}))
    out = train.train_stage(TrainJob(base=ModelOutput.model_validate(spec["base"]),
                                     dataset=DatasetOutput.model_validate(spec["dataset"]),
                                     train=TrainConfig.model_validate(spec["train"])), out_dir, callbacks=[Progress()])
    report.write_text(json.dumps({"seconds": time.time() - started, "cpu_seconds": time.process_time() - started_cpu,
                                  "metrics": out.metrics}))


def spawn(inputs: Path, out_dir: Path, report: Path) -> subprocess.Popen:
    """A training process; its output (the progress bar) goes to a file, as a full pipe would stall it. The torch
    thread count comes from OMP_NUM_THREADS (`--threads`)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(inputs), str(out_dir), str(report)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    with report.with_suffix(".log").open("w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _tail(report: Path) -> str:
    return report.with_suffix(".log").read_text()[-3000:]


def finished(proc: subprocess.Popen, report: Path) -> dict:
    if proc.wait() != 0:
        sys.exit(f"training process failed ({proc.returncode}):\n{_tail(report)}")
    return json.loads(report.read_text())


def _step(report: Path) -> int:
    text = report.with_suffix(".step").read_text().strip() if report.with_suffix(".step").exists() else ""
    return int(text) if text.isdigit() else 0


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a running process has used: fields 14 and 15 of /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def killed_at(inputs: Path, out_dir: Path, report: Path, step: int) -> dict:
    """Start training and SIGKILL it once it has done `step` steps: the seconds and CPU seconds `train_stage` ran,
    and the step it reached."""
    proc = spawn(inputs, out_dir, report)
    while _step(report) < step:
        if proc.poll() is not None:
            sys.exit(f"training process ended before it was killed:\n{_tail(report)}")
        time.sleep(0.05)  # polling costs the trainer CPU; a step or two past the mark changes nothing
    cpu = _cpu_seconds(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    ran = time.time()
    proc.wait()
    start = json.loads(report.read_text())
    return {"seconds": ran - start["started"], "cpu_seconds": cpu - start["started_cpu"], "step": _step(report)}


def repeat(inputs: Path, work: Path, fraction: float) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    full = finished(spawn(inputs, work / "full", work / "full.json"), work / "full.json")
    killed = killed_at(inputs, work / "crashed", work / "crashed.json", round(fraction * full["metrics"]["steps"]))
    resumed = finished(spawn(inputs, work / "crashed", work / "resumed.json"), work / "resumed.json")
    loss, resumed_loss = full["metrics"]["train_loss_last"], resumed["metrics"]["train_loss_last"]
    if abs(loss - resumed_loss) > 1e-4 * abs(loss):
        sys.exit(f"the resumed run ended with loss {resumed_loss}, the uninterrupted run with {loss}")
    return {
        "uninterrupted_s": full["seconds"],
        "killed_s": killed["seconds"],
        "killed_at_step": killed["step"],
        "resumed_s": resumed["seconds"],
        "ratio": (killed["seconds"] + resumed["seconds"]) / full["seconds"],
        "cpu_ratio": (killed["cpu_seconds"] + resumed["cpu_seconds"]) / full["cpu_seconds"],
        "steps": full["metrics"]["steps"],
        "resumed_from_step": resumed["metrics"]["resumed_from_step"],
        "train_loss_last": loss,
    }


def machine() -> str:
    import torch
    import transformers
    import trl

    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        train_child(*map(Path, sys.argv[2:5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=DEMO)
    parser.add_argument("--set", dest="overrides", action="append", help="recipe override a.b=value (default: "
                                                                          f"{' '.join(DEFAULT_OVERRIDES)})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the steps done when killed")
    parser.add_argument("--threads", type=int, help="torch threads per training process (default: torch's); 1 "
                                                    "keeps the timing steadier on a machine other work shares")
    args = parser.parse_args()
    args.overrides = DEFAULT_OVERRIDES if args.overrides is None else args.overrides
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-resume-") as tmp:
        root = Path(tmp)
        os.environ["FTFLOW_HOME"] = str(root / "home")
        inputs = prepare(args.recipe, args.overrides, root / "prepared")
        cfg = json.loads(inputs.read_text())["train"]
        print(f"{args.recipe.name} {' '.join(args.overrides)}: save_steps={cfg['save_steps']}, "
              f"kill at {args.kill_at:.0%}, torch threads {args.threads or 'default'}; {machine()}", flush=True)
        results = []
        for i in range(1, args.repeats + 1):
            r = repeat(inputs, root / "runs", args.kill_at)
            results.append(r)
            print(f"repeat {i} (load average {os.getloadavg()[0]:.1f}): uninterrupted {r['uninterrupted_s']:.1f} s "
                  f"({r['steps']:.0f} steps); killed after {r['killed_s']:.1f} s at step {r['killed_at_step']}; "
                  f"resumed from step {r['resumed_from_step']:.0f}, {r['resumed_s']:.1f} s; "
                  f"ratio {r['ratio']:.3f} (CPU time {r['cpu_ratio']:.3f}); "
                  f"final loss {r['train_loss_last']:.6f} in both", flush=True)
    print(f"median ratio (killed + resumed) / uninterrupted: {statistics.median(r['ratio'] for r in results):.3f} "
          f"wall clock (target <= 1.15), {statistics.median(r['cpu_ratio'] for r in results):.3f} CPU time")


if __name__ == "__main__":
    main()
