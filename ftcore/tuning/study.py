"""The search itself, through Optuna: a trial's values drawn from the `tune:` space (fields whose `when` does not
hold are left out, so a method's own fields are drawn only for that method), as the `--set` overrides a trial's
recipe is built with; the sampler, pruner and directions the section names."""

from __future__ import annotations

import json
from typing import Any

from ftcore.tuning.config import Choice, IntRange, LogUniform, TuneConfig, Uniform

SAMPLERS = {"tpe": "TPESampler", "gp": "GPSampler", "cmaes": "CmaEsSampler", "random": "RandomSampler"}
PRUNERS = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner",
           "none": "NopPruner"}


def draw(trial, tune: TuneConfig) -> dict[str, Any]:
    """The trial's value of each space field whose conditions hold, in the space's order (a condition's field is
    drawn first wherever it is listed)."""
    drawn: dict[str, Any] = {}

    def value_of(path: str) -> Any:
        if path not in drawn:
            param = tune.space[path]
            if all(value_of(field) in values for field, values in (param.when or {}).items()):
                drawn[path] = _suggest(trial, path, param)
            else:
                drawn[path] = _ABSENT
        return drawn[path]

    for path in tune.space:
        value_of(path)
    return {path: value for path, value in drawn.items() if value is not _ABSENT}


_ABSENT = object()  # a field whose conditions do not hold in this trial


def _suggest(trial, path: str, param) -> Any:
    match param:
        case LogUniform(log_uniform=(low, high)):
            return trial.suggest_float(path, low, high, log=True)
        case Uniform(uniform=(low, high)):
            return trial.suggest_float(path, low, high)
        case IntRange(int=(low, high)):
            return trial.suggest_int(path, low, high)
        case Choice(choice=choices):
            # Optuna's categorical values are plain scalars; a list or mapping is chosen by its index.
            if all(c is None or isinstance(c, bool | int | float | str) for c in choices):
                return trial.suggest_categorical(path, choices)
            return choices[trial.suggest_categorical(path, list(range(len(choices))))]
    raise TypeError(f"not a space entry: {param!r}")


def overrides(values: dict[str, Any]) -> list[str]:
    """A trial's values as the `--set` overrides its recipe is built with. A section whose `name` the trial draws
    (`method.name`) is rebuilt from the trial's fields of it alone: the recipe's settings of that section belong to
    the method it names, which another method may not have (ia3 has no rank)."""
    chosen = {path.rpartition(".")[0] for path in values if path.endswith(".name")}
    sections = {section: {p.removeprefix(section + "."): v for p, v in values.items() if p.startswith(section + ".")}
                for section in chosen}
    rest = [f"{path}={json.dumps(value)}" for path, value in values.items()
            if not any(path.startswith(section + ".") for section in chosen)]
    return [*(f"{section}={json.dumps(fields)}" for section, fields in sections.items()), *rest]


def sampler(tune: TuneConfig, seed: int):
    import optuna

    startup = {} if tune.sampler_startup_trials is None else {"n_startup_trials": tune.sampler_startup_trials}
    return getattr(optuna.samplers, SAMPLERS[tune.sampler])(seed=seed, **startup)


def pruner(tune: TuneConfig):
    import optuna

    kind = getattr(optuna.pruners, PRUNERS[tune.pruner])
    return kind(n_startup_trials=tune.startup_trials) if tune.pruner == "median" else kind()


def directions(tune: TuneConfig) -> list[str]:
    return [goal.direction for goal in tune.objectives]


def final_overrides(tune: TuneConfig, best: list[str]) -> list[str]:
    """The overrides of the run that trains the best configuration for good: the best trial's, without the search
    (a run of its own), and with `refit` the validation rows joined to the train split. The split carves the test
    rows off first, so they stay the same rows the search never saw."""
    return [*best, "tune=null", *(["data.split.validation=0"] if tune.refit else [])]


def budget_overrides(n_trials: int | None, timeout_s: float | None) -> list[str]:
    """A budget given apart from the recipe (the dashboard's form, `--trials`, `--timeout`) as recipe overrides."""
    given = {"tune.n_trials": n_trials, "tune.timeout_s": timeout_s}
    return [f"{field}={value}" for field, value in given.items() if value is not None]
