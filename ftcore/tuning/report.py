"""What a study shows: its trials as rows, its best trial (or the Pareto front of several objectives), its plots."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ftcore.tuning.config import TuneConfig
from ftcore.tuning.storage import optuna_notes_silenced

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def trial_row(trial) -> dict[str, Any]:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    attrs = trial.user_attrs
    ended = trial.datetime_complete
    return {
        "number": trial.number,
        "state": STATES[trial.state.name],
        # A pruned trial carries its last intermediate value (the pruner's, not an objective's): left out.
        "values": list(trial.values) if trial.state.name == "COMPLETE" else None,
        "params": dict(trial.params),
        "overrides": attrs.get("overrides", []),
        "started": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "ended": ended.isoformat() if ended else None,
        "duration_s": (ended - trial.datetime_start).total_seconds() if ended and trial.datetime_start else None,
        "pruned_at_step": attrs.get("pruned_at_step"),
        # A trial without a recorded failure failed when its worker stopped beating (killed, lost): retried.
        "failure": attrs.get("failure") or ("its worker stopped (no heartbeat)" if trial.state.name == "FAIL"
                                            else None),
        "retry_of": RetryHeartbeatStaleTrialCallback.retried_trial_number(trial),
        "duplicate_of": attrs.get("duplicate_of"),
        "mlflow_run_id": attrs.get("mlflow_run_id"),
        "worker": attrs.get("worker"),
        "cpu_s": attrs.get("cpu_s"),  # CPU seconds of the worker's process while the trial ran
    }


def study_summary(study, tune: TuneConfig) -> dict[str, Any]:
    """The study's trials, and its best: the best trial of one objective; with several, the Pareto front, and as
    `best` the point of it best on the first objective (the one the final run trains)."""
    with optuna_notes_silenced():
        rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in rows if r["state"] == "complete" and r["duplicate_of"] is None]
    front = [t.number for t in study.best_trials] if complete else []
    best = None
    if front:
        sign = 1 if tune.objectives[0].direction == "maximize" else -1
        best = max((r for r in complete if r["number"] in front), key=lambda r: sign * r["values"][0])
    return {
        "study": study.study_name,
        "objectives": [goal.model_dump() for goal in tune.objectives],
        "trials": rows,
        "counts": {state: sum(r["state"] == state for r in rows) for state in STATES.values()},
        "pareto_front": front if len(tune.objectives) > 1 else None,
        "best": best,
    }


def write_plots(study, tune: TuneConfig, folder: Path) -> list[Path]:
    """Optuna's plots of the study as PNG files in `folder`: optimisation history, intermediate values (what the
    pruner saw), parameter importances, parallel coordinates, and the Pareto front with several objectives. A plot
    the study cannot draw yet (importances need two finished trials) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    names = [goal.metric for goal in tune.objectives]
    several = len(names) > 1
    first = {"target": lambda t: t.values[0], "target_name": names[0]} if several else {"target_name": names[0]}
    wanted = {
        "optimization_history": lambda: plots.plot_optimization_history(study, **first),
        "intermediate_values": lambda: plots.plot_intermediate_values(study),
        "param_importances": lambda: plots.plot_param_importances(study, **first),
        "parallel_coordinate": lambda: plots.plot_parallel_coordinate(study, **first),
        **({"pareto_front": lambda: plots.plot_pareto_front(study, target_names=names)} if several else {}),
    }
    written = []
    for name, draw in wanted.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = draw()
            except (ValueError, RuntimeError):  # too few trials for this plot yet
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def describe_param(param) -> str:
    """A space entry as a recipe writes it: `log_uniform [1e-05, 0.001]`, `choice [4, 8, 16] when method.name in
    [lora, dora]`."""
    values = param.choice if param.kind == "choice" else list(param.bounds)
    shown = f"{param.kind} [{', '.join(str(v) for v in values)}]"
    for field, allowed in (param.when or {}).items():
        shown += f" when {field} in [{', '.join(str(v) for v in allowed)}]"
    return shown


def searched_methods(tune: TuneConfig, recipe_method: str) -> list[str]:
    """The methods the search trains: the choices of `method.name`, else the recipe's own."""
    drawn = tune.space.get("method.name")
    return [str(name) for name in drawn.choice] if drawn is not None and drawn.kind == "choice" else [recipe_method]


def epochs_scale(tune: TuneConfig, recipe_epochs: float) -> tuple[float, float]:
    """How much more or less compute than the recipe's own epochs a trial can take, where the space draws
    train.epochs (a trial's training compute grows with its epochs)."""
    drawn = tune.space.get("train.epochs")
    if drawn is None:
        return 1.0, 1.0
    values = [float(v) for v in (drawn.choice if drawn.kind == "choice" else drawn.bounds)]
    return min(values) / recipe_epochs, max(values) / recipe_epochs
