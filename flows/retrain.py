"""The `retrain` flow: the recipe run again, for schedules and monitor breaches. It is the finetune flow under its own
name, so scheduled and triggered runs stand apart from dashboard ones in both UIs, and a concurrency limit on
`retrain` (one at a time per registered model, docs/operations.md) leaves on-demand runs alone."""

from __future__ import annotations

from prefect import flow
from prefect.states import State

from flows.finetune import end_state, finetune
from flows.options import UNCHANGED, RunOptions
from ftcore.stages import LAST_STAGE, Stage


@flow(name="retrain", log_prints=False, validate_parameters=False)
def retrain(recipe_path: str, overrides: tuple[str, ...] = (), until: Stage = LAST_STAGE,
            options: RunOptions = UNCHANGED) -> State:
    """Run a recipe's seven stages again on its current data; the gate decides whether the new version replaces the
    champion.

    Args:
        recipe_path: the recipe YAML (a path the worker can read).
        overrides: recipe fields to change, as a.b=value.
        until: stop after this stage (the last: run them all).
        options: the recipe's common fields as a form; the fields changed there become overrides.
    """
    return end_state(finetune(recipe_path, overrides, until, options))  # named as its finetune subflow is
