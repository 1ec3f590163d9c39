"""One trial seen from inside its run: which study and trial it is (handed to the train stage outside its cache key:
the same configuration trains into the same folder, and a retried trial resumes from its checkpoint), and the
pruner's verdict at each evaluation."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from ftcore.tuning.config import TuneConfig


class TrialHook(BaseModel):
    """What the train stage needs to report to its trial: the study, the trial, and the search's settings (its
    pruner, and whether the study maximizes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study: str
    trial_id: int
    number: int
    tune: TuneConfig


class Pruned(Exception):
    """The pruner stopped the trial at `step`: its validation loss there was behind the other trials' at that step.
    Not a failure: the trial is recorded as pruned."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"pruned at step {step} (validation loss {loss:.4g})")


def pruning_reporter(hook: TrialHook) -> Callable[[int, float], None]:
    """report(step, validation_loss): records the loss as the trial's intermediate value and raises Pruned when the
    pruner says so. A maximized study gets the loss negated: Optuna's pruners compare intermediate values in the
    study's direction."""
    import optuna

    from ftcore.tuning.storage import open_storage
    from ftcore.tuning.study import pruner

    study = optuna.load_study(study_name=hook.study, storage=open_storage(), pruner=pruner(hook.tune))
    trial = optuna.Trial(study, hook.trial_id)
    sign = -1.0 if hook.tune.objectives[0].direction == "maximize" else 1.0

    def report(step: int, loss: float) -> None:
        trial.report(sign * loss, step)
        if trial.should_prune():
            raise Pruned(step, loss)

    return report
