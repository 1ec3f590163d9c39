"""`ftflow tune`: search a recipe's `tune:` space as a Prefect flow (flows/tune.py), or preview the search
(`--dry-run`: the space, the budget and each trial's estimated cost from `ftflow plan`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_runs import check_hardware, prepare_to_run, run_reporting_failures, show_run
from flows.cli_shared import RecipeArg, SetOpt, console, err_console, fail, validated


def register_commands(app: typer.Typer) -> None:
    app.command()(tune)


def tune(
    recipe: RecipeArg,
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option(
        "--trials", min=1, help="Trials in the study (default: tune.n_trials); raise it to extend a search.")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=1, help="Start no trial after this many seconds (default: tune.timeout_s).")] = None,
    workers: Annotated[int, typer.Option(
        min=1, help="Processes running trials at once on this machine (each trial in one).")] = 1,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the space, the budget and each trial's estimated cost; run nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the study's summary as JSON.")] = False,
    join: Annotated[bool, typer.Option(
        "--join", help="Only run trials of the study, beside the `ftflow tune` that started it.")] = False,
    worker: Annotated[int, typer.Option(
        "--worker", min=0, help="This worker's number among the study's (with --join).")] = 0,
) -> None:
    """Search RECIPE's `tune:` space: each trial a Prefect subflow (init, train, evaluate on the validation split),
    pruned on its validation loss, the best configuration trained again and registered through the gate. Running it
    again resumes the study."""
    from ftcore.tuning.study import budget_overrides

    overrides = [*(set_ or []), *budget_overrides(trials, timeout)]
    loaded = validated(recipe, overrides, model_folder="config" if dry_run else "files", search=True)
    if loaded.tune is None:
        fail(f"{recipe}: has no tune: section to search; add one (docs/tune.md)")
    if dry_run:
        preview = _preview(recipe, loaded, overrides)
        print(json.dumps(preview, indent=2)) if as_json else console.print(_render_preview(preview))
        return
    check_hardware(loaded, recipe, strict=True)
    prepare_to_run()
    from flows.tune import tune as tune_flow

    result = run_reporting_failures(
        lambda: tune_flow(str(recipe), overrides, workers=workers, join=join, worker=worker), as_json)
    _report_study(result, as_json)


def _preview(recipe: Path, loaded, overrides: list[str]) -> dict[str, Any]:
    """The search as it would run: its study (and how far an earlier start got), space, objectives, budget, and the
    cost of a trial of each searched method, from `ftflow plan`'s estimates at the method's own defaults."""
    from ftcore.planning.plan import make_plan
    from ftcore.recipe import load_recipe
    from ftcore.tuning.report import describe_param, epochs_scale, searched_methods
    from ftcore.tuning.search import study_name, trials_so_far

    tune = loaded.tune
    name = study_name(loaded.name, loaded.content_hash(), tune)
    first = make_plan(loaded, recipe)
    costs = {}
    for method in searched_methods(tune, loaded.method.name):
        planned = first if method == loaded.method.name else make_plan(
            load_recipe(recipe, [*overrides, f"method={json.dumps({'name': method})}"]), recipe, data=first.data)
        estimate = planned.estimates[method]
        costs[method] = {"trainable_params": estimate.trainable, "planned_bytes": estimate.planned_bytes,
                         "fits": estimate.fits, "train_flops": estimate.flops}
    low, high = epochs_scale(tune, loaded.train.epochs)
    return {"study": name, "trials_so_far": trials_so_far(name),
            "space": {path: describe_param(param) for path, param in tune.space.items()},
            "objectives": [goal.model_dump() for goal in tune.objectives],
            "n_trials": tune.n_trials, "timeout_s": tune.timeout_s, "sampler": tune.sampler,
            "sampler_startup_trials": tune.sampler_startup_trials, "pruner": tune.pruner,
            "cost_per_trial": costs, "epochs_scale": [low, high]}


def _render_preview(preview: dict[str, Any]):
    from rich import box
    from rich.console import Group
    from rich.table import Table

    from ftcore.planning.report import human_bytes, human_count, human_flops

    space = Table("field", "values", box=box.SIMPLE_HEAD, title="space", title_justify="left")
    for path, values in preview["space"].items():
        space.add_row(path, values)
    low, high = preview["epochs_scale"]
    scaled = "" if low == high == 1 else f" (x{low:.2g} to x{high:.2g} with the epochs drawn)"
    costs = Table("method", "trainable", "memory", "fits", "train FLOPs", box=box.SIMPLE_HEAD,
                  title=f"cost per trial, from ftflow plan{scaled}", title_justify="left")
    for method, cost in preview["cost_per_trial"].items():
        flops = cost["train_flops"]
        costs.add_row(method, human_count(cost["trainable_params"]), human_bytes(cost["planned_bytes"]),
                      "yes" if cost["fits"] else "[red]no[/]", "-" if flops is None else human_flops(flops))
    goals = ", ".join(f"{g['direction']} {g['metric']}" for g in preview["objectives"])
    budget = f"{preview['n_trials']} trials" + (f" or {preview['timeout_s']:g} s" if preview["timeout_s"] else "")
    so_far, startup = preview["trials_so_far"], preview["sampler_startup_trials"]
    sampler = preview["sampler"] + (f" after {startup} random trials" if startup else "")
    lines = [f"study {preview['study']}: " + (f"{so_far} trials so far (this search resumes it)" if so_far
                                              else "new"),
             f"objectives: {goals}; budget: {budget}; sampler {sampler}, pruner {preview['pruner']}"]
    return Group(*lines, space, costs)


def _report_study(result: dict[str, Any], as_json: bool) -> None:
    """The trials table, the best trial, and the final run's report (its stage table, model and gate)."""
    from rich import box
    from rich.table import Table

    out = err_console if as_json else console
    names = [g["metric"] for g in result["objectives"]]
    table = Table("trial", "state", *names, "configuration", "s", box=box.SIMPLE_HEAD,
                  title=f"study {result['study']}", title_justify="left")
    for row in result["trials"]:
        values = row["values"] or [None] * len(names)
        note = {"pruned": f"at step {row['pruned_at_step']}", "failed": row["failure"]}.get(row["state"])
        if row["duplicate_of"] is not None:
            note = f"same as trial {row['duplicate_of']}"
        if row["retry_of"] is not None:
            note = f"retry of trial {row['retry_of']}" + (f", {note}" if note else "")
        state = row["state"] + (f" ({note})" if note else "")
        table.add_row(str(row["number"]), state, *("-" if v is None else f"{v:.4g}" for v in values),
                      " ".join(row["overrides"]), "-" if row["duration_s"] is None else f"{row['duration_s']:.0f}")
    out.print(table)
    best = result["best"]
    if best is None:
        out.print("[yellow]no trial completed[/]: nothing to train again")
    else:
        values = ", ".join(f"{name} {value:.4g}" for name, value in zip(names, best["values"], strict=True))
        out.print(f"best: trial {best['number']} ({values})", highlight=False)
    if result.get("final"):  # not a --join worker's: the search's own start runs it
        out.print("its configuration through the pipeline, scored on the test split the search never saw:")
        show_run(result["final"], out)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
