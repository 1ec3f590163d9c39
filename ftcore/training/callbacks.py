"""Trainer callbacks of the train stage: atomic checkpoints, a stop at a non-finite loss, per-step analytics, early
stopping, a quiet progress bar.

Imported only when a trainer is built: it imports transformers, which the modules that merely name the stage need not.
"""

from __future__ import annotations

import logging
import math
import time

from accelerate.utils import wait_for_everyone
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ftcore import tracking
from ftcore.progress import duration
from ftcore.training.analytics import peak_memory_mb
from ftcore.training.checkpoints import CheckpointStore
from ftcore.training.divergence import NonFinite

log = logging.getLogger(__name__)

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


class LiveMetrics(TrainerCallback):
    """Logs each entry of the training history to the pipeline's MLflow run as the Trainer makes it (every logging
    step: loss, learning rate, grad norm, tokens per second; each evaluation: eval_loss), named by
    tracking.metric_key (`1 loss/train`, `1 loss/validation`, `2 training/<key>`) at the global step, from the first
    process only. A step the run has already is skipped: a retried attempt resumed from a checkpoint trains (and
    logs) again the steps after it that the failed attempt logged.

    A failed log does not stop training: history.json keeps every entry, and the stage logs the points missing from
    the run when it ends (tracking.log_training_history). It is warned about once; a real fault (not a hiccup) then
    fails that final logging, visibly."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.logged: dict[str, set[int]] = {}
        self.warned = False

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._try(lambda: self.logged.update(tracking.logged_training_steps(self.run_id)))
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            points = tracking.training_points(state.log_history[-1:])
            self._try(lambda: tracking.log_training_points(self.run_id, points, self.logged))
        return control

    def _try(self, logging_call) -> None:
        try:
            logging_call()
        except Exception as e:  # a tracking hiccup must not end hours of training
            if not self.warned:
                log.warning("could not log training metrics to MLflow run %s (%s: %s); training goes on, and the "
                            "missing steps are logged from history.json when it ends", self.run_id,
                            type(e).__name__, e)
                self.warned = True


class ProgressLog(TrainerCallback):
    """A line in the log (ftcore's logger, hence the Prefect run's log) about every tenth of the run, at a logging
    step: `step 120/465 loss 1.234 lr 4.1e-03 12.3 tok/s, 2m10s left`. The interval follows the run's length, so a
    run of any length gets about LINES lines."""

    LINES = 10

    def on_train_begin(self, args, state, control, **kwargs):
        every_logging_step = max(1, state.logging_steps)
        self.every = max(1, round(state.max_steps / self.LINES / every_logging_step)) * every_logging_step
        # Resumed from a checkpoint: the time left is measured on this session's steps.
        self.started, self.first_step = time.perf_counter(), state.global_step
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry, step = state.log_history[-1], state.global_step
        if state.is_world_process_zero and "loss" in entry and (step % self.every == 0 or step == state.max_steps):
            per_step = (time.perf_counter() - self.started) / max(step - self.first_step, 1)
            log.info("step %d/%d loss %.4g lr %.2g %.1f tok/s, %s left", step, state.max_steps, entry["loss"],
                     entry.get("learning_rate", math.nan), entry.get("tokens_per_second", math.nan),
                     duration(per_step * (state.max_steps - step)))
        return control


class ProgressBarOnly(ProgressCallback):
    """The training progress bar with the latest loss, without the dict it prints at every logging step
    (history.json and MLflow keep those)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and "loss" in (logs or {}):
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}")


class ReportEvaluations(TrainerCallback):
    """Hands each periodic evaluation's validation loss, with its step, to `report` (a search's pruner, which may
    stop training by raising)."""

    def __init__(self, report):
        self.report = report

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics and "eval_loss" in metrics:
            self.report(state.global_step, metrics["eval_loss"])
        return control
