"""Training in several processes (`train.distributed`), launched through accelerate.

The stage writes its TrainRun to a file beside the checkpoints and runs `accelerate launch` (torchrun underneath)
with this module as the program. Every process runs the same `train_in_process` on its shard of each global batch;
the Trainer wraps the model for the strategy (DDP, FSDP2 or DeepSpeed ZeRO), gradients are averaged over the
processes, and the first process writes the output folder and the stage's metrics, which the stage reads back.

The launcher stays out of the stage's own process on purpose: torch.distributed's process group is global state
that a Prefect worker running other stages must not hold, and a crashed rank takes only its own processes down.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from ftcore.errors import UserError
from ftcore.fs import atomic_write_text
from ftcore.training.config import DistributedConfig, TrainConfig
from ftcore.training.jobs import TrainRun

log = logging.getLogger(__name__)

JOB_FILE, RESULT_FILE, ERROR_FILE = "job.json", "result.json", "user_error.txt"


def run_workers(run: TrainRun) -> dict[str, float]:
    """Train `run` in `train.distributed.num_processes` processes on this machine (and the other
    machines, which must run the command logged here) and return the first process's metrics."""
    workdir: Path = run.checkpoints
    job_path, result_path, error_path = workdir / JOB_FILE, workdir / RESULT_FILE, workdir / ERROR_FILE
    for stale in (result_path, error_path):
        stale.unlink(missing_ok=True)
    atomic_write_text(job_path, run.model_dump_json())
    cfg: DistributedConfig = run.job.train.distributed
    rendezvous = cfg.main_process or f"127.0.0.1:{free_port()}"
    if cfg.num_machines > 1:
        others = launch_command(job_path, run.job.train, rendezvous, machine_rank=1)
        log.info("machine 0 of %d is waiting at %s; on machine k (1..%d) run, with the same FTFLOW_HOME "
                 "(shared storage) and --machine_rank k: %s", cfg.num_machines, rendezvous, cfg.num_machines - 1,
                 " ".join(others))
    log.info("training in %d processes (%s, %s backend)", cfg.num_processes, cfg.strategy, backend(cfg))
    returncode = subprocess.run(launch_command(job_path, run.job.train, rendezvous, machine_rank=0)).returncode
    if error_path.exists():  # a problem with the recipe or the data, found by one of the processes
        raise UserError(error_path.read_text())
    if returncode != 0 or not result_path.exists():
        raise RuntimeError(f"distributed training failed (launcher exit code {returncode}); the processes' output "
                           f"is above")
    return json.loads(result_path.read_text())


def launch_command(job_path: Path, cfg: TrainConfig, rendezvous: str, machine_rank: int) -> list[str]:
    """`accelerate launch` of this module for one machine. Its multi-process launcher is torchrun on CPUs too;
    the Trainer reads the strategy from its own arguments (trainer_arguments), so the launcher only spawns."""
    dist = cfg.distributed
    host, port = rendezvous.rsplit(":", 1)
    per_machine = dist.num_processes // dist.num_machines
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(dist.num_processes), "--num_machines", str(dist.num_machines),
               "--machine_rank", str(machine_rank), "--main_process_ip", host, "--main_process_port", port,
               "--mixed_precision", cfg.mixed_precision, "--dynamo_backend", "no"]
    if backend(dist) == "gloo":
        # Each process gets its share of the cores: more threads than cores makes every process slower.
        command += ["--num_cpu_threads_per_process", str(max(1, len(os.sched_getaffinity(0)) // per_machine))]
    return [*command, "-m", __name__, str(job_path)]


def backend(cfg: DistributedConfig) -> str:
    import torch

    return cfg.backend or ("nccl" if torch.cuda.is_available() else "gloo")


def check_distributed(cfg: DistributedConfig) -> None:
    """Refuse, before launching, what this machine cannot run."""
    if not cfg.enabled:
        return
    import torch  # only here: a run that does not distribute need not wait for torch's import

    gpus = torch.cuda.device_count()
    if backend(cfg) == "nccl" and gpus == 0:
        raise UserError("train.distributed.backend: nccl needs CUDA GPUs and this machine has none; use gloo")
    per_machine = cfg.num_processes // cfg.num_machines
    if gpus and per_machine > gpus:
        raise UserError(f"train.distributed.num_processes: {per_machine} processes per machine, but this machine has "
                        f"{gpus} GPU(s); use at most one process per GPU")
    if cfg.strategy != "ddp" and gpus == 0:
        raise UserError(f"train.distributed.strategy: {cfg.strategy} shards over CUDA GPUs and this machine has "
                        f"none; use ddp")
    if cfg.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("train.distributed.strategy: deepspeed needs the deepspeed package; pip install "
                            "deepspeed, or use fsdp")


def strategy_arguments(cfg: DistributedConfig, model) -> dict:
    """The Trainer arguments that pick the strategy; DDP is the Trainer's default in a multi-process launch."""
    if not cfg.enabled:
        return {}
    # DDP's search for parameters without a gradient costs a graph traversal per step; only a mixture of experts
    # needs it (a batch may route no token to an expert), and without it such a step fails.
    arguments: dict = {"ddp_backend": backend(cfg), "ddp_find_unused_parameters": routes_to_experts(model)}
    if cfg.strategy == "fsdp":
        arguments |= {"fsdp": True, "fsdp_config": {"version": 2, "state_dict_type": "FULL_STATE_DICT"}}
    elif cfg.strategy == "deepspeed":
        # "auto" takes each value from the Trainer's arguments, so the recipe stays the only place they are set.
        arguments["deepspeed"] = {
            "zero_optimization": {"stage": cfg.zero_stage or 2},
            "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        }
    return arguments


def routes_to_experts(model) -> bool:
    config = getattr(model, "config", None)
    return (getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 1) > 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(job_path: str) -> int:
    """One process of a distributed run: train, and from the first process write the metrics for the stage."""
    from ftcore.quiet import quiet_libraries
    from ftcore.training.train import train_in_process  # train.py launches this module

    quiet_libraries()
    path = Path(job_path)
    run = TrainRun.model_validate_json(path.read_text())
    try:
        metrics = train_in_process(run)
    except UserError as e:
        atomic_write_text(path.with_name(ERROR_FILE), str(e))
        return 2
    if metrics is not None:
        atomic_write_text(path.with_name(RESULT_FILE), json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
