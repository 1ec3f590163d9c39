"""Training in several processes (`train.distributed`): two DDP processes on CPU (gloo) launched through accelerate
train the same model as one process does on the same global batch, publish checkpoints a killed run resumes from,
and report a recipe problem found by a worker as the stage's one-line error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ftcore.errors import UserError
from ftcore.training.checkpoints import MARKER, checkpoint_root
from ftcore.training.config import DistributedConfig, TrainConfig
from ftcore.training.distributed import check_distributed, launch_command
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.conftest import REPO
from tests.ftcore.pipeline_fixtures import prepare

SCHEDULE = {"max_steps": 8, "save_steps": 4, "logging_steps": 1}
GLOBAL_BATCH = 8


def two_processes(cfg: TrainConfig) -> TrainConfig:
    """The same global batch in two processes: half of it each."""
    return cfg.model_copy(update={"batch_size": GLOBAL_BATCH // 2,
                                  "distributed": DistributedConfig(num_processes=2, backend="gloo")})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def one_process(prepared, tmp_path_factory):
    cfg = prepared.recipe.train.model_copy(update={**SCHEDULE, "batch_size": GLOBAL_BATCH})
    return train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg),
                       tmp_path_factory.mktemp("one") / "train")


def losses(trained) -> list[float]:
    return [h["loss"] for h in json.loads(trained.history_path.read_text()) if "loss" in h]


def assert_same_training(trained, reference) -> None:
    """Same loss at every step and the same adapter, up to float32 reduction order (all-reduce sums the halves'
    gradients in another order than one backward pass over the whole batch)."""
    assert losses(trained) == pytest.approx(losses(reference), rel=1e-4)
    ours = load_file(trained.adapter_path / "adapter_model.safetensors")
    theirs = load_file(reference.adapter_path / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-3, atol=1e-4)


def test_two_ddp_processes_match_one_process_on_the_same_global_batch(prepared, one_process, tmp_path):
    cfg = two_processes(prepared.recipe.train.model_copy(update=SCHEDULE))
    trained = train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), tmp_path / "train")
    assert trained.metrics["processes"] == 2 and one_process.metrics["processes"] == 1
    assert trained.metrics["steps"] == 8
    assert losses(trained)[-1] < losses(trained)[0]
    assert_same_training(trained, one_process)
    # The stage's output is complete and the job files went with the checkpoints.
    assert (trained.model_path / "model.safetensors").is_file()
    assert not checkpoint_root(tmp_path / "train").exists()
    # A single process's metrics are there too, from the first process.
    assert {"train_loss_first", "train_loss_last", "tokens_per_second", "eval_loss"} <= trained.metrics.keys()


# Slows each checkpoint commit of the training processes (RANK is set in them only), so the test can kill the run
# between two checkpoints; Python imports it at start-up in every process of the launched tree.
SLOW_COMMITS = """
import os, time
if os.environ.get("RANK") is not None:
    from ftcore.training import callbacks

    commit = callbacks.CommitCheckpoints.on_save

    def slow_commit(self, *args, **kwargs):
        control = commit(self, *args, **kwargs)
        time.sleep(3)
        return control

    callbacks.CommitCheckpoints.on_save = slow_commit
"""

RUN_TRAINING = """
import json, sys
from pathlib import Path
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage

job, out_dir = json.loads(sys.argv[1])
train_stage(TrainJob.model_validate(job), Path(out_dir))
"""


def test_a_killed_ddp_run_resumes_from_its_last_checkpoint(prepared, one_process, tmp_path):
    cfg = two_processes(prepared.recipe.train.model_copy(update=SCHEDULE))
    out_dir = tmp_path / "train"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_COMMITS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO)])}
    job = TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg)
    args = json.dumps([job.model_dump(mode="json"), str(out_dir)])
    run = subprocess.Popen([sys.executable, "-c", RUN_TRAINING, args], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = checkpoint_root(out_dir) / "checkpoint-4"
    deadline = time.monotonic() + 240
    while not (checkpoint / MARKER).exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and both training processes, mid-run
    run.wait()
    assert (checkpoint / MARKER).exists(), "the run ended or timed out before publishing its step-4 checkpoint"
    assert not out_dir.exists()
    # Each process saved its own RNG state into the one checkpoint.
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}

    resumed = train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), out_dir)
    assert resumed.metrics["resumed_from_step"] == 4
    assert resumed.metrics["steps"] == 8
    assert_same_training(resumed, one_process)


def test_a_recipe_problem_found_by_the_training_processes_is_one_line(prepared, tmp_path):
    no_validation = prepared.dataset.model_copy(update={"splits": {k: v for k, v in prepared.dataset.splits.items()
                                                                   if k != "validation"}})
    cfg = two_processes(prepared.recipe.train.model_copy(
        update={**SCHEDULE, "eval_steps": 2, "early_stopping_patience": 1}))
    with pytest.raises(UserError, match=r"^train\.early_stopping_patience: the dataset has no validation rows"):
        train_stage(TrainJob(base=prepared.base, dataset=no_validation, train=cfg), tmp_path / "train")
    assert not (tmp_path / "train").exists() and not checkpoint_root(tmp_path / "train").exists()


@pytest.mark.parametrize(("fields", "error"), [
    ({"num_processes": 2, "num_machines": 2}, "needs main_process"),
    ({"num_processes": 3, "num_machines": 2, "main_process": "node0:29500"}, "multiple of num_machines"),
    ({"num_processes": 2, "zero_stage": 3}, "only for strategy: deepspeed"),
    ({"strategy": "fsdp"}, "set num_processes above 1"),
    ({"num_processes": 2, "num_machines": 2, "main_process": "node0"}, "main_process"),
])
def test_distributed_settings_that_cannot_work_are_refused(fields, error):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        DistributedConfig(**fields)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without GPUs refuses")
@pytest.mark.parametrize(("fields", "error"), [
    ({"backend": "nccl"}, r"^train\.distributed\.backend: nccl needs CUDA GPUs"),
    ({"strategy": "fsdp"}, r"^train\.distributed\.strategy: fsdp shards over CUDA GPUs"),
    ({"strategy": "deepspeed"}, r"^train\.distributed\.strategy: deepspeed shards over CUDA GPUs"),
])
def test_a_cpu_machine_refuses_gpu_only_settings_before_launching(fields, error):
    with pytest.raises(UserError, match=error):
        check_distributed(DistributedConfig(num_processes=2, **fields))


def test_every_machine_of_a_multi_node_run_gets_the_same_launch_but_its_rank(tmp_path):
    cfg = TrainConfig(distributed=DistributedConfig(num_processes=4, num_machines=2, main_process="node0:29500",
                                                    backend="gloo"))
    first, second = (launch_command(tmp_path / "job.json", cfg, "node0:29500", rank) for rank in (0, 1))
    # --multi_gpu picks accelerate's torchrun launcher, which runs CPU processes too.
    assert first[:4] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    assert first[-3:] == ["-m", "ftcore.training.distributed", str(tmp_path / "job.json")]
    rank_at = first.index("--machine_rank") + 1
    assert (first[rank_at], second[rank_at]) == ("0", "1")
    assert first[:rank_at] + first[rank_at + 1:] == second[:rank_at] + second[rank_at + 1:]
    flags = dict(zip(first[4:-3:2], first[5:-3:2], strict=True))
    assert flags["--num_processes"] == "4" and flags["--num_machines"] == "2"
    assert (flags["--main_process_ip"], flags["--main_process_port"]) == ("node0", "29500")
    assert int(flags["--num_cpu_threads_per_process"]) >= 1


def test_the_train_section_survives_the_trip_through_the_job_file():
    """Each training process rebuilds its settings from JSON: defaults must validate again as they were."""
    for cfg in (TrainConfig(), TrainConfig(distributed=DistributedConfig(num_processes=2, strategy="deepspeed",
                                                                         zero_stage=3))):
        assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_two_ddp_processes_train_a_vision_language_model_as_one_process_does(tmp_path):
    """Images decoded in each process's collator, the projector trained beside the LoRA adapter, the frozen vision
    tower without gradients (DDP told to expect unused parameters): the same steps as one process."""
    from tests.ftcore.test_image_text import prepared_shapes

    recipe, dataset, base = prepared_shapes(tmp_path / "shapes", "llava", method={"name": "lora", "r": 4},
                                            **SCHEDULE, batch_size=GLOBAL_BATCH)
    one = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                      tmp_path / "one")
    two = train_stage(TrainJob(base=base, dataset=dataset, train=two_processes(recipe.train), objective=recipe.spec),
                      tmp_path / "two")
    assert two.metrics["processes"] == 2 and losses(two)[-1] < losses(two)[0]
    assert_same_training(two, one)
