"""How the commands that run the pipeline (`ftflow run`, `ftflow tune`) start their flow and report a run: its stage
table, model and gate, or its failure as one line with exit code 2 (the user's data or recipe) or 1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from flows.cli_shared import configure, connect_prefect, console, err_console, fail
from flows.settings import check_room, start_embedded_prefect
from ftcore.errors import UserError, storage_error
from ftcore.paths import home

T = TypeVar("T")


def prepare_to_run() -> None:
    """The environment checked, room on FTFLOW_HOME's disk, and Prefect's server to run on: each a one-line error."""
    configure()
    try:
        check_room(home())
    except UserError as e:
        fail(str(e))
    connect_prefect()


def run_reporting_failures(start: Callable[[], T], as_json: bool) -> T:
    """What `start()` (a flow) returns, with Prefect's embedded server started first. A failed stage is reported
    (its run's summary, then one error line) before exiting."""
    from flows.finetune import StageFailed

    try:
        start_embedded_prefect()
        return start()
    except StageFailed as failed:
        report_run(failed.summary, as_json)
        err_console.print(f"[red]error:[/] {failed.summary['failure']}", highlight=False, soft_wrap=True)
        # Bad data or recipe (the user's to fix) exits 2 like any user error; anything else is a failure (1).
        raise typer.Exit(2 if failed.summary["failure_is_user_error"] else 1) from None
    except UserError as e:
        fail(str(e))
    except Exception as e:  # a full or read-only disk anywhere in the run (MLflow's store, a summary) is one line
        problem = storage_error(e)
        if problem is None:
            raise
        fail(str(problem))


def report_run(summary: dict, as_json: bool) -> None:
    """The run's report (show_run), on stderr when stdout carries the summary as JSON."""
    show_run(summary, err_console if as_json else console)
    if as_json:
        print(json.dumps(summary, indent=2))


def show_run(summary: dict, out: Console) -> None:
    """The run's stage table, its model and gate, where its summary.json is, and its pages in MLflow's UI."""
    from flows.summary import render_table

    out.print(render_table(summary))
    model = summary.get("model")
    if model:
        out.print(f"model [bold]{model['name']}[/] version [bold]{model['version']}[/] "
                  f"aliases: {', '.join(model['aliases'])}")
        out.print(f"{gate_verdict(model, summary['gate'])}: {summary['gate']['reason']}", highlight=False)
    out.print(f"summary: {home() / 'runs' / summary['run_id'] / 'summary.json'}")
    # Last, where to look next: the run and the version in MLflow's UI (FTFLOW_MLFLOW_UI_URL, docs/operations.md).
    for label, key in (("MLflow run", "mlflow_run_url"), ("model version", "model_version_url")):
        if summary.get(key):
            out.print(f"{label}: {summary[key]}", highlight=False, soft_wrap=True)


def gate_verdict(model: dict, gate: dict) -> str:
    """What the gate did: promoted the version, kept the champion, or had nothing to decide (the candidate is the
    champion already, the same trained model)."""
    if gate["passed"]:
        return f"gate [green]passed[/]: v{model['version']} is champion"
    if "champion" in model["aliases"]:
        return f"[cyan]v{model['version']} is the champion already[/], nothing to promote"
    return f"gate [yellow]failed[/]: v{model['version']} stays challenger"


def check_hardware(loaded, recipe: Path, strict: bool) -> None:
    """Whether this machine can train in the recipe's train.mixed_precision (fp16 needs a CUDA GPU): if not, an
    error when STRICT, else a warning."""
    from ftcore.training.train import check_hardware as check_precision

    try:
        check_precision(loaded.train)
    except UserError as e:
        if strict:
            fail(f"{recipe}: {e}")
        err_console.print(f"[yellow]warning:[/] {recipe}: {e} (on this machine)", highlight=False, soft_wrap=True)
