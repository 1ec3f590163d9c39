"""Resuming the train stage: a training process killed with SIGKILL, a checkpoint damaged on disk, and a Prefect retry
all continue from the last complete checkpoint and end where an uninterrupted run with the same seed ends.

A tiny LoRA model on the demo data, 24 steps, a checkpoint every 4 (see docs/training.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ftcore import tracking
from ftcore.errors import UserError
from ftcore.outputs import DatasetOutput, TrainOutput
from ftcore.stages import LAST_STAGE, Stage
from ftcore.training import train
from ftcore.training.checkpoints import CheckpointStore, checkpoint_root, problem_with
from ftcore.training.config import TrainConfig
from ftcore.training.jobs import TrainJob
from tests.conftest import DEMO_RECIPE, REPO, TINY_OVERRIDES
from tests.ftcore.pipeline_fixtures import Prepared, prepare

pytestmark = pytest.mark.e2e

SCHEDULE = {"max_steps": 24, "save_steps": 4, "save_total_limit": 2, "logging_steps": 2, "eval_steps": 8}
STAGE_METRICS = {"trainable_params", "total_params", "trainable_fraction", "train_loss_first", "train_loss_last",
                 "tokens_per_second", "peak_memory_mb", "resumed_from_step"}

# Runs train_stage in a fresh interpreter, writing the step it has reached to a file after every step and pausing a
# little so that the test can kill it between two checkpoints.
KILLABLE = """
import json, sys, time
from pathlib import Path
from transformers import TrainerCallback
from ftcore.training.jobs import TrainJob
from ftcore.training import train

job, out_dir, progress = json.loads(sys.argv[1])

class Progress(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        Path(progress).write_text(str(state.global_step))
        time.sleep(0.3)

train.train_stage(TrainJob.model_validate(job), Path(out_dir), callbacks=[Progress()])
"""


class Crash(Exception):
    """Injected into training at a given step."""


def with_splits(dataset: DatasetOutput, names: tuple[str, ...]) -> DatasetOutput:
    return dataset.model_copy(update={"splits": {k: dataset.splits[k] for k in names}})


def crash_at(step: int, times: int = 1):
    """A callback that raises Crash when training reaches `step`, the first `times` times."""
    from transformers import TrainerCallback

    class CrashAt(TrainerCallback):
        crashes = 0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step and CrashAt.crashes < times:
                CrashAt.crashes += 1
                raise Crash(f"injected crash at step {step}")

    return CrashAt


def add_callback(monkeypatch: pytest.MonkeyPatch, callback_class) -> None:
    """Into a train stage that the flow runs (a direct call passes `callbacks=` instead)."""
    build = train.build_trainer

    def build_with_callback(*args, **kwargs):
        trainer, analytics = build(*args, **kwargs)
        trainer.add_callback(callback_class())
        return trainer, analytics

    monkeypatch.setattr(train, "build_trainer", build_with_callback)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
    return prepare(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def cfg(prepared) -> TrainConfig:
    return prepared.recipe.train.model_copy(update=SCHEDULE)


@pytest.fixture(scope="module")
def reference(prepared, cfg, tmp_path_factory) -> TrainOutput:
    """The uninterrupted run every resumed run must match."""
    out_dir = tmp_path_factory.mktemp("reference") / "train"
    return train.train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), out_dir)


def assert_same_training(resumed: TrainOutput, reference: TrainOutput) -> None:
    assert resumed.metrics["steps"] == reference.metrics["steps"] == SCHEDULE["max_steps"]
    for metric in ("train_loss_first", "train_loss_last", "eval_loss"):
        assert resumed.metrics[metric] == pytest.approx(reference.metrics[metric], rel=1e-4), metric
    history, expected = ([(h["step"], key, h[key]) for h in json.loads(o.history_path.read_text())
                          for key in ("loss", "eval_loss") if key in h] for o in (resumed, reference))
    assert [entry[:2] for entry in history] == [entry[:2] for entry in expected]
    assert [entry[2] for entry in history] == pytest.approx([entry[2] for entry in expected], rel=1e-4)
    after, wanted = (load_file(o.adapter_path / "adapter_model.safetensors" if o.adapter_path else
                               o.model_path / "model.safetensors") for o in (resumed, reference))
    assert after.keys() == wanted.keys()
    for name in wanted:
        torch.testing.assert_close(after[name], wanted[name], rtol=1e-4, atol=1e-5)
    assert not checkpoint_root(resumed.path).exists()  # removed once the output is complete


def test_an_uninterrupted_run_reports_its_analytics(reference):
    assert reference.metrics.keys() >= STAGE_METRICS
    assert reference.metrics["resumed_from_step"] == 0
    assert 0 < reference.metrics["trainable_fraction"] < 1 and reference.metrics["tokens_per_second"] > 0
    assert reference.metrics["peak_memory_mb"] > 50
    steps = [h for h in json.loads(reference.history_path.read_text()) if "loss" in h]
    assert [h["step"] for h in steps] == list(range(2, 25, 2))
    for entry in steps:
        assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "peak_memory_mb"} <= entry.keys()
        assert entry["tokens_per_second"] > 0
    norms = json.loads((reference.path / "weight_norms.json").read_text())
    assert list(norms) == ["layer 0", "layer 1"] and all(v > 0 for v in norms.values())  # 2 layers, all LoRA
    for artifact in ("loss_plot", "weight_norm_plot"):
        assert reference.artifacts[artifact].stat().st_size > 1000
    assert not checkpoint_root(reference.path).exists()


def kill_at_step_10(job: TrainJob, out_dir: Path, progress: Path, log_path: Path) -> int:
    """Run `job` in a fresh interpreter and SIGKILL it once step 10 is reached (with a checkpoint every 4 steps,
    those at steps 4 and 8 are complete, the one at 12 not yet); returns its exit status."""
    payload = [job.model_dump(mode="json"), str(out_dir), str(progress)]
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(payload)], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.monotonic() + 300
            while _reached(progress) < 10:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "training did not reach step 10 in 300 s"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    return proc.returncode


def _reached(progress: Path) -> int:
    text = progress.read_text().strip() if progress.exists() else ""
    return int(text) if text.isdigit() else 0


def test_a_training_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(prepared, cfg, reference, tmp_path):
    out_dir, progress = tmp_path / "train", tmp_path / "progress"
    job = TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg)
    assert kill_at_step_10(job, out_dir, progress, tmp_path / "killed.log") == -signal.SIGKILL
    reached = _reached(progress)
    assert reached < SCHEDULE["max_steps"] and not out_dir.exists()
    left = [c.step for c in CheckpointStore(checkpoint_root(out_dir), keep=2).all()]
    assert len(left) == cfg.save_total_limit and left[0] >= 8

    resumed = train.train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), out_dir)

    assert resumed.metrics["resumed_from_step"] == left[0]
    assert 0 <= reached - left[0] <= cfg.save_steps  # at most one checkpoint interval of steps ran twice
    assert_same_training(resumed, reference)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # as by a full disk


def _fill_with_nan(path: Path) -> None:
    """The same tensors, names, metadata and size, every value NaN: as the weights of a diverged run would be."""
    size, tensors = path.stat().st_size, load_file(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file({name: torch.full_like(tensor, float("nan")) for name, tensor in tensors.items()}, path, metadata)
    assert path.stat().st_size == size  # only the content can tell


def _overwrite_with_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize(("file", "damage", "reason"), [
    ("adapter_model.safetensors", _truncate, "adapter_model.safetensors has"),
    ("adapter_model.safetensors", _fill_with_nan, "adapter_model.safetensors does not match its content hash"),
    ("optimizer.pt", _overwrite_with_garbage, "optimizer.pt does not match its content hash"),
])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(prepared, cfg, reference, tmp_path, caplog, capfd,
                                                                   file, damage, reason):
    out_dir = tmp_path / "train"
    with pytest.raises(Crash):
        train.train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), out_dir,
                          callbacks=[crash_at(14)()])
    store = CheckpointStore(checkpoint_root(out_dir), keep=cfg.save_total_limit)
    assert [c.step for c in store.all()] == [12, 8]  # the newest save_total_limit
    damage(store.all()[0].path / file)

    with caplog.at_level("INFO", logger="ftcore.training"):
        resumed = train.train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), out_dir)

    assert resumed.metrics["resumed_from_step"] == 8
    logged = [r.getMessage() for r in caplog.records]
    assert any("skipping checkpoint" in line and "checkpoint-12" in line and reason in line for line in logged)
    assert any("resuming training from" in line and "checkpoint-8 (step 8)" in line for line in logged)
    assert "weights_only" not in "\n".join(logged) + "".join(capfd.readouterr())  # torch's unsafe advice
    assert_same_training(resumed, reference)


def inject_nan_at(step: int):
    """A callback that sets a trained weight to NaN at the end of `step`, as a diverging update would."""
    from transformers import TrainerCallback

    class NanAt(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == step:
                next(p for p in model.parameters() if p.requires_grad).data.fill_(float("nan"))

    return NanAt


@pytest.mark.parametrize(("step", "found_at", "splits", "found"), [
    (5, 6, ("train", "validation"), "the training loss is nan"),  # logged every 2 steps
    (4, 4, ("train", "validation"), "the checkpoint's weight adapter_model.safetensors: "),  # saved after its log
    (24, 24, ("train",), "the trained weight "),  # the last step: after the last loss, and no evaluation
])
def test_a_non_finite_loss_or_weight_stops_training_at_its_step(prepared, cfg, tmp_path, step, found_at, splits,
                                                                found):
    out_dir = tmp_path / "train"
    with pytest.raises(UserError) as failed:
        train.train_stage(TrainJob(base=prepared.base, dataset=with_splits(prepared.dataset, splits), train=cfg),
                          out_dir, callbacks=[inject_nan_at(step)()])
    message = str(failed.value)
    assert message.startswith(f"train.learning_rate: {found}") and "\n" not in message
    assert f"at step {found_at}: training diverged" in message
    assert message.endswith("lower train.learning_rate (now 0.01)")
    assert not out_dir.exists()
    kept = CheckpointStore(checkpoint_root(out_dir), keep=cfg.save_total_limit).all()
    saved_before = range(cfg.save_steps, step, cfg.save_steps)  # the checkpoints written before the NaN
    assert [c.step for c in kept] == sorted(saved_before, reverse=True)[: cfg.save_total_limit]
    assert all(problem_with(c) is None for c in kept)  # none holds the NaN


def test_early_stopping_ends_training_once_the_validation_loss_stops_improving(prepared, tmp_path):
    # A learning rate high enough for the validation loss to turn up well before max_steps.
    cfg = prepared.recipe.train.model_copy(update={"max_steps": 60, "eval_steps": 2, "early_stopping_patience": 1,
                                                   "learning_rate": 1.0, "logging_steps": 2})
    out = train.train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), tmp_path / "train")
    evals = [h["eval_loss"] for h in json.loads(out.history_path.read_text()) if "eval_loss" in h]
    assert out.metrics["steps"] < 60 and out.metrics["steps"] == 2 * len(evals)
    assert evals[-1] >= min(evals[:-1])  # the last evaluation did not improve: patience 1 is used up
    assert all(evals[i] < min(evals[:i]) for i in range(1, len(evals) - 1))  # every earlier one improved
    assert out.metrics["eval_loss"] == evals[-1]


# --- through the flow -------------------------------------------------------------------------------------------


def run_flow(*overrides: str, until: Stage = LAST_STAGE) -> dict:
    from flows.finetune import finetune

    return finetune(str(DEMO_RECIPE), [*TINY_OVERRIDES, *overrides], until)


@pytest.mark.usefixtures("prefect_harness")
def test_a_prefect_retry_of_the_train_stage_resumes_and_mlflow_records_it(monkeypatch):
    # After step 10's log entry, which the first attempt logs live to MLflow and the retry, resumed from step 8, makes
    # again.
    add_callback(monkeypatch, crash_at(11))
    summary = run_flow("stages.retries=1", "train.max_steps=12", "train.save_steps=4", until=Stage.train)

    train = summary["stages"]["train"]
    assert train["status"] == "completed"
    assert train["metrics"]["resumed_from_step"] == 8 and train["metrics"]["steps"] == 12
    assert train["metrics"].keys() >= STAGE_METRICS
    client = tracking.client()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics[tracking.metric_key("resumed_from_step", "train")] == 8
    per_step = {tracking.metric_key(name) for name in ("tokens_per_second", "peak_memory_mb", "grad_norm")}
    assert per_step <= run.data.metrics.keys()
    loss = client.get_metric_history(summary["mlflow_run_id"], tracking.metric_key("loss"))
    assert [m.step for m in loss] == [5, 10]  # once each
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "stages/train")}
    assert {"stages/train/loss.png", "stages/train/weight_norms.png", "stages/train/history.json"} <= artifacts


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU can train in fp16")
def test_fp16_on_a_machine_without_a_gpu_fails_the_train_stage_once_in_one_line():
    """Started as a flow (the Prefect dashboard's way; `ftflow run` refuses before the flow starts, test_cli.py),
    the train stage refuses, is not retried, and the summary names the field."""
    from flows.finetune import StageFailed, finetune

    with pytest.raises(StageFailed) as failed:
        finetune(str(DEMO_RECIPE), [*TINY_OVERRIDES, "train.mixed_precision=fp16"], Stage.train)
    summary = failed.value.summary
    assert summary["failure"] == ("stage train failed: UserError: train.mixed_precision: fp16 needs a CUDA GPU and "
                                  "this machine has none; use bf16 (runs on CPU) or no")
    assert summary["failure_is_user_error"]
