"""Trainer callbacks of the train stage: atomic checkpoints, a stop at a non-finite loss, per-step analytics, early
stopping, a quiet progress bar.

Imported only when a trainer is built: it imports transformers, which the modules that merely name the stage need not.
"""

from __future__ import annotations

import math
import time

from accelerate.utils import wait_for_everyone
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ftcore.training.analytics import peak_memory_mb
from ftcore.training.checkpoints import CheckpointStore
from ftcore.training.divergence import NonFinite

# Per-step keys that count from the start of the current session, so they restart after a resume: the interval
# figures below and the Trainer's `num_input_tokens_seen` (restored with a checkpoint) replace them.
_SESSION_COUNTS = ("train_runtime", "train_tokens_per_second", "num_tokens")
# The losses the Trainer logs: per logging window, per evaluation, and the run's mean at the end.
_LOSSES = {"loss": "the training loss", "eval_loss": "the validation loss", "train_loss": "the mean training loss"}


class CommitCheckpoints(TrainerCallback):
    """Publishes each checkpoint the Trainer writes (see CheckpointStore.commit), and never saves at the last step:
    the stage writes its output right after, and the Trainer resumed from a checkpoint at its last step would train
    one step more than the run it resumes."""

    def __init__(self, store: CheckpointStore, save_steps: int):
        self.store, self.save_steps = store, save_steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.save_steps or state.global_step >= state.max_steps:
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        # In a distributed run every process writes its part (its RNG state at least): the first process publishes
        # the checkpoint once all of them are done, and none goes on while it does.
        wait_for_everyone()
        if state.is_world_process_zero:
            self.store.commit(state.global_step)
        wait_for_everyone()
        return control


class StopAtNonFiniteLoss(TrainerCallback):
    """Raises NonFinite at the first logged training, validation or final loss that is NaN or infinite. Each training
    loss is the mean since the previous log, so one bad step shows (trainer_arguments turns off the Trainer's
    filter that would average it away)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, what in _LOSSES.items():
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise NonFinite(f"{what} is {value}", state.global_step)
        return control


class StepAnalytics(TrainerCallback):
    """Adds to every training log entry the tokens per second since the previous entry (wall clock, so evaluation
    and checkpoint writes in the interval count) and the peak memory so far. It edits `state.log_history`, which
    checkpoints carry, so a resumed run's history.json still has them for the steps before the crash."""

    def __init__(self) -> None:
        self.tokens_at_start = self._last_tokens = 0
        self._last_time = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        # Called after a checkpoint's state is restored: this session's throughput counts from here.
        self.tokens_at_start = self._last_tokens = state.num_input_tokens_seen
        self._last_time = time.perf_counter()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = state.log_history[-1]
        if "loss" not in entry:  # evaluation and end-of-training summaries
            return control
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        entry["tokens_per_second"] = (tokens - self._last_tokens) / max(now - self._last_time, 1e-9)
        entry["peak_memory_mb"] = peak_memory_mb()
        for key in _SESSION_COUNTS:
            entry.pop(key, None)
        self._last_time, self._last_tokens = now, tokens
        return control


class EarlyStopping(TrainerCallback):
    """Stops training after `patience` evaluations without a lower validation loss. It counts from
    `state.log_history` rather than keeping a counter, so a run resumed from a checkpoint goes on counting where the
    crashed one was."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # A NaN loss (a diverged run) is no improvement on anything.
        losses = [entry["eval_loss"] if entry["eval_loss"] == entry["eval_loss"] else math.inf
                  for entry in state.log_history if "eval_loss" in entry]
        if losses and len(losses) - 1 - losses.index(min(losses)) >= self.patience:
            control.should_training_stop = True
            control.should_save = False  # a checkpoint here would be resumed past the step training stopped at
        return control


class ProgressBarOnly(ProgressCallback):
    """The training progress bar without the dict it prints at every logging step (history.json and MLflow keep
    those)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass
