"""A search over one recipe: its study (named from what it searches, so running the same search again resumes it),
the next trial to run under the budget, and each trial's outcome told to Optuna.

Several workers (processes, or machines on one PostgreSQL) share a study: each asks for its next trial under a lock,
the budget counts the trials every worker started, and a configuration drawn again is not trained again (it takes
the earlier trial's outcome). Running the trials is the caller's: the Prefect flow runs each as a subflow
(flows/tune.py); this module knows nothing of Prefect.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ftcore.hashing import hash_obj, short
from ftcore.locks import file_lock
from ftcore.paths import home
from ftcore.tuning.config import TuneConfig
from ftcore.tuning.storage import heartbeat, heartbeat_s, open_storage, optuna_notes_silenced
from ftcore.tuning.study import directions, draw, overrides, pruner, sampler
from ftcore.tuning.trial import TrialHook

# What a trial's run measured besides its evaluation metrics, by the names a tune objective uses (config.py:
# TRIAL_MEASURES), and where the run's stages put them.
MEASURED_BY = {"validation_loss": ("train", "eval_loss"), "train_seconds": ("train", "runtime_s"),
               "trainable_parameters": ("init", "trainable_params")}


def study_name(recipe_name: str, recipe_hash: str, tune: TuneConfig) -> str:
    """`<recipe>-<hash>` of what decides the search's trials: the recipe's content (its overrides included) and the
    space, objectives, sampler and pruner. The budget (n_trials, timeout_s) is left out: raising it and running the
    search again continues the same study."""
    searched = tune.model_dump(mode="json", exclude={"n_trials", "timeout_s"})
    return f"{recipe_name}-{short(hash_obj([recipe_hash, searched]))}"


@dataclass
class Outcome:
    """How a trial's run ended: its objective values (complete), the step the pruner stopped it at (pruned), or the
    reason it failed."""

    state: Literal["complete", "pruned", "failed"]
    values: list[float] = field(default_factory=list)
    pruned_at: int | None = None
    reason: str | None = None
    run_id: str | None = None  # the trial's MLflow run


@dataclass
class Trial:
    """A trial to run: its number, its recipe overrides, and the hook its train stage reports through."""

    number: int
    values: dict[str, Any]
    overrides: list[str]
    hook: TrialHook
    optuna_trial: Any = field(repr=False)


class Search:
    def __init__(self, name: str, tune: TuneConfig, seed: int, worker: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # ftflow logs each trial itself
        self.name, self.tune = name, tune
        self.storage = open_storage()
        self.study = optuna.create_study(study_name=name, storage=self.storage, load_if_exists=True,
                                         directions=directions(tune), pruner=pruner(tune))
        # Seeded for a fresh study, and differently for each worker and each resumption: two samplers seeded alike
        # would draw the same first configurations.
        self.study.sampler = sampler(tune, seed + 1009 * worker + len(self.study.trials))
        self.started = time.monotonic()

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False)

    def next_trial(self) -> Trial | None:
        """The next trial to run, or None when the budget is spent (n_trials started by all workers, or timeout_s
        since this search started). A configuration drawn before is told the earlier trial's outcome and skipped."""
        import optuna

        with file_lock(home() / "tune" / f"{self.name}.lock"), optuna_notes_silenced():
            while True:
                optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial: failed, and queued again
                if self._budget_spent():
                    return None
                trial = self.study.ask()
                values = draw(trial, self.tune)
                if not self._told_twin(trial):
                    break
        # The trial's id in the storage (Optuna keeps it private; the train stage's reporter needs it).
        hook = TrialHook(study=self.name, trial_id=trial._trial_id, number=trial.number, tune=self.tune)
        return Trial(trial.number, values, overrides(values), hook, trial)

    def wait_for_running(self) -> bool:
        """Wait while other workers' trials run; True when one of them died and its configuration is queued again
        (the caller runs it), False once none runs."""
        import optuna
        from optuna.trial import TrialState

        while True:
            with optuna_notes_silenced():
                optuna.storages.fail_stale_trials(self.study)
            states = {t.state for t in self.trials()}
            if TrialState.WAITING in states:
                return True
            if TrialState.RUNNING not in states:
                return False
            time.sleep(heartbeat_s())

    def _budget_spent(self) -> bool:
        from optuna.storages import RetryHeartbeatStaleTrialCallback
        from optuna.trial import TrialState

        if self.tune.timeout_s is not None and time.monotonic() - self.started >= self.tune.timeout_s:
            return True
        trials = self.trials()
        if any(t.state == TrialState.WAITING for t in trials):
            return False  # a dead worker's trial, queued again: it is run whatever the budget
        retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
        return sum(t.number not in retried for t in trials) >= self.tune.n_trials

    def _told_twin(self, trial) -> bool:
        """Whether the trial's configuration is one an earlier trial has (finished, pruned or running): if so it is
        told that trial's outcome, not trained again."""
        from optuna.trial import TrialState

        twin = next((t for t in self.trials() if t.number != trial.number and t.params == trial.params
                     and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)), None)
        if twin is None:
            return False
        trial.set_user_attr("duplicate_of", twin.number)
        if twin.state == TrialState.COMPLETE:
            self.study.tell(trial, twin.values)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)
        return True

    def run(self, trial: Trial, run_trial) -> Outcome:
        """Run the trial with `run_trial(trial) -> Outcome`, beating its heartbeat meanwhile, and tell the study."""
        from optuna.trial import TrialState

        trial.optuna_trial.set_user_attr("overrides", trial.overrides)
        trial.optuna_trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        started = time.process_time()  # this process's CPU, every thread: the trial's compute (it runs here alone)
        with heartbeat(self.storage, trial.hook.trial_id):
            outcome = run_trial(trial)
        trial.optuna_trial.set_user_attr("cpu_s", round(time.process_time() - started, 2))
        if outcome.run_id:
            trial.optuna_trial.set_user_attr("mlflow_run_id", outcome.run_id)
        if outcome.state == "complete":
            self.study.tell(trial.optuna_trial, outcome.values)
        elif outcome.state == "pruned":
            trial.optuna_trial.set_user_attr("pruned_at_step", outcome.pruned_at)
            self.study.tell(trial.optuna_trial, state=TrialState.PRUNED)
        else:
            trial.optuna_trial.set_user_attr("failure", outcome.reason)
            self.study.tell(trial.optuna_trial, state=TrialState.FAIL)
        return outcome


def objective_values(tune: TuneConfig, stages: dict[str, dict]) -> list[float]:
    """The trial's value of each objective, from its run's stage metrics (evaluate's, or MEASURED_BY's); KeyError
    naming a metric the run did not produce."""
    values = []
    for goal in tune.objectives:
        stage, key = MEASURED_BY.get(goal.metric, ("evaluate", goal.metric))
        metrics = stages[stage]["metrics"]
        if key not in metrics:
            raise KeyError(f"the {stage} stage measured no {key} (objective {goal.metric})")
        values.append(float(metrics[key]))
    return values



def trials_so_far(name: str) -> int:
    """How many trials the study `name` has (0 when there is none yet)."""
    import optuna

    storage = open_storage()
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        return 0
    return len(optuna.load_study(study_name=name, storage=storage).trials)
