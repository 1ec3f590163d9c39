"""The train stage's options and checkpoint store, without training: recipe validation, the hardware check, which
checkpoints count as complete, rotation, and early stopping's count."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from ftcore.errors import RecipeError, UserError
from ftcore.hashing import hash_file
from ftcore.recipe import load_recipe
from ftcore.training.checkpoints import MARKER, CheckpointStore, checkpoint_root, problem_with
from ftcore.training.config import TrainConfig
from ftcore.training.train import check_hardware
from tests.conftest import DEMO_RECIPE


def _problems(*overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as e:
        load_recipe(DEMO_RECIPE, list(overrides))
    return e.value.problems


def test_training_options_load_with_their_overrides():  # their defaults: test_config.py checks docs/recipes.md's
    train = load_recipe(DEMO_RECIPE, ["train.eval_steps=20", "train.early_stopping_patience=3", "train.packing=true",
                                      "train.mixed_precision=bf16", "train.gradient_checkpointing=true"]).train
    assert (train.eval_steps, train.early_stopping_patience, train.packing) == (20, 3, True)
    assert (train.mixed_precision, train.gradient_checkpointing) == ("bf16", True)
    assert load_recipe(DEMO_RECIPE, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # YAML: false


@pytest.mark.parametrize(("overrides", "expected"), [
    (["train.early_stopping_patience=2", "train.eval_steps=null"], "train: early_stopping_patience needs eval_steps"),
    (["train.early_stopping_patience=2", "train.eval_steps=10", "train.max_steps=10"],
     "train: early_stopping_patience: eval_steps (10) must be below max_steps (10)"),
    (["train.mixed_precision=fp32"], "train.mixed_precision: Input should be 'no', 'fp16' or 'bf16', got 'fp32'"),
    (["train.save_total_limit=0"], "train.save_total_limit: Input should be greater than or equal to 1"),
    (["train.save_steps=0"], "train.save_steps: Input should be greater than or equal to 1"),
])
def test_bad_training_options_name_the_field(overrides, expected):
    problems = _problems(*overrides)
    assert len(problems) == 1 and problems[0].startswith(f"{DEMO_RECIPE}: {expected}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU can train in fp16")
def test_fp16_without_a_gpu_is_refused_in_one_line_naming_the_field():
    with pytest.raises(UserError) as e:
        check_hardware(TrainConfig(mixed_precision="fp16"))
    assert str(e.value).startswith("train.mixed_precision: fp16 needs a CUDA GPU") and "\n" not in str(e.value)
    check_hardware(TrainConfig(mixed_precision="bf16"))  # bf16 runs on CPU


# --- checkpoints ------------------------------------------------------------------------------------------------


def _stage_checkpoint(store: CheckpointStore, step: int, weight: float | None = None) -> Path:
    """What the Trainer writes for an adapter checkpoint, into `incoming` (the weights all `weight`, else `step`)."""
    folder = store.incoming / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.full((4, 8), float(step if weight is None else weight))},
              str(folder / "adapter_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": step, "exp_avg": torch.ones(4)}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def _write_checkpoint(store: CheckpointStore, step: int) -> Path:
    """A checkpoint as the Trainer writes it, committed."""
    _stage_checkpoint(store, step)
    return store.commit(step).path


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    store = CheckpointStore(checkpoint_root(tmp_path / "train" / "abc123"), keep=2)
    store.prepare()
    return store


def test_the_checkpoint_folder_sits_beside_the_output_folder(tmp_path):
    assert checkpoint_root(tmp_path / "train" / "abc123") == tmp_path / "train" / "abc123.checkpoints"


def test_commit_publishes_a_complete_checkpoint_and_keeps_the_newest(store):
    for step in (5, 10, 15):
        _write_checkpoint(store, step)
    assert [c.step for c in store.all()] == [15, 10]
    assert list(store.incoming.iterdir()) == []
    newest = store.latest_complete()
    assert newest.step == 15 and problem_with(newest) is None
    assert json.loads((newest.path / MARKER).read_text())["step"] == 15


def _overwrite_with_garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256) + b"\0" * (path.stat().st_size % 256))


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8  # inside the JSON header, same size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda c: (c / MARKER).unlink(), f"no readable {MARKER}"),
    (lambda c: (c / "adapter_model.safetensors").write_bytes((c / "adapter_model.safetensors").read_bytes()[:-40]),
     "adapter_model.safetensors has"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    # Damage that keeps every size: only the content hash can tell.
    (lambda c: _corrupt_header(c / "adapter_model.safetensors"),
     "adapter_model.safetensors does not match its content hash"),
    (lambda c: save_file({"lora_A": torch.full((4, 8), float("nan"))}, str(c / "adapter_model.safetensors")),
     "adapter_model.safetensors does not match its content hash"),
    (lambda c: _overwrite_with_garbage(c / "optimizer.pt"), "optimizer.pt does not match its content hash"),
])
def test_a_damaged_checkpoint_is_logged_skipped_and_removed(store, caplog, damage, reason):
    _write_checkpoint(store, 5)
    damage(_write_checkpoint(store, 10))
    with caplog.at_level(logging.WARNING, logger="ftcore.training.checkpoints"):
        chosen = store.latest_complete()
    assert chosen.step == 5
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "skipping checkpoint" in warnings[0] and "checkpoint-10" in warnings[0]
    assert reason in warnings[0] and "weights_only" not in warnings[0]
    assert [c.step for c in store.all()] == [5]


def test_a_checkpoint_without_the_resume_files_or_at_another_step_is_not_complete(store):
    folder = _write_checkpoint(store, 5)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert "trainer_state.json" in problem_with(store.all()[0])  # its size changed too
    marker = json.loads((folder / MARKER).read_text())
    marker["files"]["trainer_state.json"] = {"bytes": (folder / "trainer_state.json").stat().st_size,
                                             "sha256": hash_file(folder / "trainer_state.json")}
    (folder / MARKER).write_text(json.dumps(marker))
    assert problem_with(store.all()[0]) == "trainer_state.json is at step 4, not 5"
    del marker["files"]["rng_state.pth"]
    (folder / MARKER).write_text(json.dumps(marker))
    assert problem_with(store.all()[0]) == "rng_state.pth not in the checkpoint"


@pytest.mark.parametrize(("damage", "reason"), [
    (_overwrite_with_garbage, "optimizer.pt does not load (not a file of tensors: the weights-only loader refused it)"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "optimizer.pt does not load (PytorchStreamReader failed"),
    (lambda p: torch.save({"exp_avg": torch.tensor([1.0, float("inf")])}, p),
     "optimizer.pt holds non-finite values (NaN or infinity) in optimizer.pt.exp_avg"),
])
def test_a_file_written_wrong_before_the_commit_is_caught_by_loading_it(store, damage, reason):
    """The hash only proves a file is what was committed: a torch file the Trainer wrote damaged, or with a
    non-finite value, is refused by loading it as resuming would (weights-only), without torch's unsafe advice."""
    _write_checkpoint(store, 5)
    damage(_stage_checkpoint(store, 10) / "optimizer.pt")
    store.commit(10)
    problem = problem_with(store.all()[0])
    assert problem.startswith(reason) and "weights_only=False" not in problem
    assert store.latest_complete().step == 5


def test_a_checkpoint_without_content_hashes_is_not_resumed(store):
    """Written by an ftflow that recorded only sizes: nothing proves its content."""
    folder = _write_checkpoint(store, 5)
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({"step": 5, "files": {n: f["bytes"] for n, f in marker["files"].items()}}))
    assert problem_with(store.all()[0]).startswith(f"{MARKER} records no content hashes")


def test_a_checkpoint_with_non_finite_weights_is_never_published(store):
    from ftcore.training.divergence import NonFinite

    _write_checkpoint(store, 5)
    _stage_checkpoint(store, 10, weight=float("nan"))
    with pytest.raises(NonFinite) as e:
        store.commit(10)
    assert (e.value.step, e.value.what) == (10, "the checkpoint's weight adapter_model.safetensors: lora_A is not "
                                                "finite")
    assert [c.step for c in store.all()] == [5]


def test_prepare_discards_a_checkpoint_the_trainer_was_writing_when_killed(store):
    _write_checkpoint(store, 5)
    half_written = store.incoming / "checkpoint-10"
    half_written.mkdir()
    (half_written / "optimizer.pt").write_bytes(b"\0" * 10)
    assert store.latest_complete().step == 5
    store.prepare()
    assert list(store.incoming.iterdir()) == []


# --- early stopping ---------------------------------------------------------------------------------------------


def _evaluations(*losses: float):
    from transformers import TrainerControl

    state = SimpleNamespace(log_history=[{"eval_loss": loss, "step": i} for i, loss in enumerate(losses)])
    return state, TrainerControl()


@pytest.mark.parametrize(("losses", "patience", "stops"), [
    ((3.0, 2.0, 1.0), 1, False),
    ((3.0, 2.0, 2.5), 1, True),
    ((3.0, 2.0, 2.5), 2, False),
    ((3.0, 2.0, 2.5, 2.0), 2, True),  # equal is not better
    ((3.0, 2.0, 2.5, 1.9), 2, False),
    ((float("nan"), 2.0), 1, False),  # NaN counts as worse than anything
    ((3.0, float("nan")), 1, True),
])
def test_early_stopping_counts_evaluations_since_the_best_from_the_history(losses, patience, stops):
    from ftcore.training.callbacks import EarlyStopping

    state, control = _evaluations(*losses)
    control.should_save = True
    EarlyStopping(patience).on_evaluate(None, state, control)
    assert control.should_training_stop is stops
    assert control.should_save is not stops  # no checkpoint to resume past the stop


@pytest.mark.parametrize(("step", "saves"), [(8, True), (10, False), (12, False)])
def test_checkpoints_are_written_every_save_steps_but_never_at_the_last_step(store, step, saves):
    from transformers import TrainerControl

    from ftcore.training.callbacks import CommitCheckpoints

    control = TrainerControl(should_save=True)  # as the Trainer's own flow sets it on an interval and at the end
    CommitCheckpoints(store, save_steps=4).on_step_end(None, SimpleNamespace(global_step=step, max_steps=12), control)
    assert control.should_save is saves
