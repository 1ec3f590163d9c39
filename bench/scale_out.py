"""Scale-out, measured in one run: the data stage on Dask versus the default runner, and training in two DDP
processes versus one.

1. **Data stage**: the clean stage (`clean_balance_stage`) of `data_recipes/recipes/shared/medquad_qa.yaml` on
   the real MedQuAD sample in ../shared/data, run with `runtime.task_runner: local` (the default: parts one after the
   other in this process) and `runtime.task_runner: dask` (parts as Prefect tasks on a Dask LocalCluster of
   `--workers` worker processes, each started afresh as the stage does, so the cluster's start-up is counted).
   Both must give the same output (content hash) before a ratio is printed. `--copies N` repeats the sample N
   times (the copies are quarantined as duplicates) for a workload where start-up weighs less.
2. **Training** (skip with `--no-train`): the train stage on the cleaned MedQuAD rows, a small scratch model, the
   same global batch in one process and in two DDP processes (train.distributed, gloo); tokens/s and the loss
   difference.

    python bench/scale_out.py [--workers 2] [--batch-rows 128] [--copies 1] [--repeats 2] [--no-train]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flows.settings import configure_environment

configure_environment()  # Prefect's ephemeral API: the Dask runner's parts are Prefect task runs

import pandas as pd  # noqa: E402
from distributed import LocalCluster  # noqa: E402

from ftcore.data.clean import clean_balance_stage  # noqa: E402
from ftcore.data.collect import CollectJob, collect_stage  # noqa: E402
from ftcore.data.config import RuntimeConfig  # noqa: E402
from ftcore.jobs import clean_job  # noqa: E402
from ftcore.models.init import InitJob, init_stage  # noqa: E402
from ftcore.recipe import load_recipe  # noqa: E402
from ftcore.training.config import DistributedConfig  # noqa: E402
from ftcore.training.jobs import TrainJob  # noqa: E402
from ftcore.training.train import train_stage  # noqa: E402
from tasks.parallel import part_mapper, worker_environment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "data_recipes" / "recipes" / "shared" / "medquad_qa.yaml"
SMALL_MODEL = ["model.scratch.hidden_size=128", "model.scratch.intermediate_size=256",
               "model.scratch.num_hidden_layers=2", "model.scratch.num_attention_heads=4",
               "model.scratch.vocab_size=2000", "train.max_length=128"]


def repeated_sample(copies: int, folder: Path) -> Path:
    sample = REPO.parent / "shared" / "data" / "medquad_sample_every16.jsonl"
    if copies == 1:
        return sample
    rows = pd.read_json(sample, lines=True)
    path = folder / f"medquad_x{copies}.jsonl"
    pd.concat([rows] * copies, ignore_index=True).to_json(path, orient="records", lines=True)
    return path


def bench_data(args, tmp: Path) -> None:
    source = repeated_sample(args.copies, tmp)
    recipe = load_recipe(RECIPE, [f"data.sources.0.path={source}"])
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp / "collected", batch_rows=args.batch_rows)
    parts = -(-collected.rows // args.batch_rows)
    print(f"data stage: {collected.rows} MedQuAD rows in {parts} parts of {args.batch_rows}; "
          f"{len(recipe.clean.steps)} cleaning steps")
    clean_balance_stage(clean_job(recipe, collected), tmp / "warm", args.batch_rows)  # imports
    environment = worker_environment()  # starts the embedded Prefect API now, as a pipeline run has already
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env=environment) as cluster:
        runners = {
            "local": RuntimeConfig(),
            "dask, new cluster": RuntimeConfig(task_runner="dask", dask={"n_workers": args.workers}),
            "dask, running cluster": RuntimeConfig(task_runner="dask", dask={"address": cluster.scheduler_address}),
        }
        clean_balance_stage(clean_job(recipe, collected), tmp / "warm-cluster", args.batch_rows,
                            part_mapper(runners["dask, running cluster"]))  # its workers' imports and models
        timings: dict[str, list[float]] = {name: [] for name in runners}
        hashes = {}
        for repeat in range(1, args.repeats + 1):
            for name, runtime in runners.items():
                started = time.perf_counter()
                out = clean_balance_stage(clean_job(recipe, collected), tmp / f"{len(hashes)}-{repeat}",
                                          args.batch_rows, part_mapper(runtime))
                timings[name].append(time.perf_counter() - started)
                hashes[name] = out.content_hash
                print(f"  repeat {repeat} {name:22}: {collected.rows / timings[name][-1]:7.0f} rows/s "
                      f"({timings[name][-1]:.2f} s; kept {out.metrics['rows_kept']:.0f})")
    if len(set(hashes.values())) != 1:
        sys.exit(f"the runners' outputs differ: {hashes}")
    local = statistics.median(timings["local"])
    print(f"data stage, median of {args.repeats}, identical output; dask with {args.workers} workers:")
    for name, values in timings.items():
        print(f"  {name:22}: {collected.rows / statistics.median(values):7.0f} rows/s, "
              f"{local / statistics.median(values):.2f}x local")


def timed(fn, *args):
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def bench_train(tmp: Path) -> None:
    recipe = load_recipe(RECIPE, [*SMALL_MODEL, "train.max_steps=60", "train.batch_size=8", "train.logging_steps=5"])
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp / "train-collected")
    dataset = clean_balance_stage(clean_job(recipe, collected), tmp / "train-clean")
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset), tmp / "init")
    two_cfg = recipe.train.model_copy(update={"batch_size": 4,
                                              "distributed": DistributedConfig(num_processes=2, backend="gloo")})
    (one, one_s), (two, two_s) = (timed(train_stage, TrainJob(base=base, dataset=dataset, train=cfg), tmp / name)
                                  for cfg, name in ((recipe.train, "one"), (two_cfg, "two")))
    # Outside the training loop: loading the model and data, writing the output; and for two, their processes.
    launch_s = (two_s - two.metrics["runtime_s"]) - (one_s - one.metrics["runtime_s"])
    print(f"training: {one.metrics['steps']:.0f} steps, global batch 8, LoRA on a "
          f"{base.metrics['total_params'] / 1e6:.1f}M-parameter model, {os.cpu_count()} cores")
    for name, out in (("1 process", one), ("2 DDP processes", two)):
        print(f"  {name:16}: {out.metrics['tokens_per_second']:7.0f} tokens/s ({out.metrics['runtime_s']:.1f} s), "
              f"loss {out.metrics['train_loss_first']:.4f} -> {out.metrics['train_loss_last']:.4f}")
    print(f"training: 2 processes / 1 = {two.metrics['tokens_per_second'] / one.metrics['tokens_per_second']:.2f}x "
          f"tokens/s; last loss differs by {abs(two.metrics['train_loss_last'] - one.metrics['train_loss_last']):.1e};"
          f" launching the processes added {launch_s:.1f} s to the stage")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Dask LocalCluster worker processes")
    parser.add_argument("--batch-rows", type=int, default=128, help="rows per part (runtime.batch_rows)")
    parser.add_argument("--copies", type=int, default=1, help="repeat the MedQuAD sample this many times")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="only the data stage")
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-scale-") as folder:
        tmp = Path(folder)
        bench_data(args, tmp)
        if not args.no_train:
            bench_train(tmp)


if __name__ == "__main__":
    main()
