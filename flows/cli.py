"""`ftflow`: run, validate and inspect recipes. Errors a user can cause print one line each and exit with code 2;
a failed stage exits with code 1 after naming the stage and the reason.

The pipeline's commands are here; `ftflow quarantine` is in flows/cli_data.py, the UI, serving, monitoring and
deployment commands in flows/cli_ops.py, and what they share in flows/cli_shared.py."""

from __future__ import annotations

import atexit
import gc
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from flows import cli_data, cli_ops, cli_tune
from flows.cli_runs import check_hardware, prepare_to_run, report_run, run_reporting_failures
from flows.cli_shared import (
    OneLineUsageErrors,
    RecipeArg,
    SetOpt,
    configure,
    console,
    fail,
    validated,
)
from flows.settings import VERBOSE
from ftcore.deploy.config import ExportKind
from ftcore.errors import UserError
from ftcore.paths import home
from ftcore.plugins import Registry
from ftcore.quiet import quiet_libraries
from ftcore.stages import LAST_STAGE, STAGES, Stage

EXPORT_KINDS = get_args(ExportKind)
app = typer.Typer(cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  help="Fine-tune language models as a Prefect flow.")


@app.callback()
def options(
    verbose_: Annotated[bool, typer.Option(
        "--verbose", envvar=VERBOSE, help="Show the traceback of every error, a user's mistake (exit 2) too.")] = False,
) -> None:
    # In the environment, so that Prefect's log records (flows/settings.py) and the processes a run starts see it.
    os.environ[VERBOSE] = "1" if verbose_ else "0"


@app.command()
def run(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML file; several run in order as a chain.")],
    set_: SetOpt = None,
    until: Annotated[str | None, typer.Option(
        help=f"Stop after this stage (one recipe only): {', '.join(s.value for s in STAGES)}.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout.")] = False,
) -> None:
    """Run the seven-stage finetune flow on RECIPE; several recipes run in order, each continuing from the models
    the ones before it registered (e.g. SFT, reward model, RL)."""
    overrides = set_ or []
    stop_after = _stop_after(until, len(recipes))
    for recipe in recipes:
        loaded = validated(recipe, overrides)  # fail fast, before Prefect's server starts
        if STAGES.index(stop_after) >= STAGES.index(Stage.train):
            check_hardware(loaded, recipe, strict=True)
    prepare_to_run()
    summaries = run_reporting_failures(lambda: _run_flows(recipes, overrides, stop_after), as_json)
    for summary in summaries:
        report_run(summary, as_json and len(summaries) == 1)
    if as_json and len(summaries) > 1:
        print(json.dumps(summaries, indent=2))


def _run_flows(recipes: list[Path], overrides: list[str], stop_after: Stage) -> list[dict]:
    """The summaries of the finetune flow on one recipe, or of the chain of several."""
    from flows.chain import chain
    from flows.finetune import finetune

    if len(recipes) == 1:
        return [finetune(str(recipes[0]), overrides, stop_after)]
    return chain([str(r) for r in recipes], overrides)


def _stop_after(until: str | None, recipe_count: int) -> Stage:
    """The stage --until names (the last one when none is); checked here: click's own error is a box."""
    if until is not None and recipe_count > 1:
        fail("--until: a chain runs every recipe to the end; give one recipe to stop early")
    if until is not None and until not in {s.value for s in STAGES}:
        fail(f"--until: {until!r} is not a stage; use one of {', '.join(s.value for s in STAGES)}")
    return LAST_STAGE if until is None else Stage(until)


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check RECIPE without running it: exit 0, or list every problem and exit 2."""
    loaded = validated(recipe, set_ or [], search=True)  # the tune: section too, as `ftflow tune` would check it
    console.print(f"[green]ok[/] {recipe}: recipe {loaded.name!r}, objective {loaded.objective}, "
                  f"{len(loaded.data.sources)} source(s), method {loaded.method.name}", highlight=False, soft_wrap=True)
    check_hardware(loaded, recipe, strict=False)  # the recipe may be meant for other hardware: warn only


@app.command()
def plan(
    recipe: RecipeArg,
    set_: SetOpt = None,
    memory_gb: Annotated[float | None, typer.Option(
        "--memory-gb", min=0.001, help="Memory budget in GB (10^9 bytes); default: the GPU's, else the RAM.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Estimate parameters, memory and compute of RECIPE's model per fine-tuning method here, and recommend one."""
    loaded = validated(recipe, set_ or [], model_folder="config")  # a model's config.json is enough to plan it
    from ftcore.planning.plan import make_plan
    from ftcore.planning.report import render_plan

    print_report(lambda: make_plan(loaded, recipe, memory_gb), render_plan, as_json)


@app.command(name="inspect")
def inspect_model(
    model: Annotated[str, typer.Argument(
        metavar="MODEL", help="A model folder (with config.json), a .gguf file, models:/NAME@ALIAS or "
                              "models:/NAME/VERSION.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Describe MODEL from its config alone, no weights loaded: family, parameters, dtype, context, vocabulary,
    chat template, licence, which methods train it for which objective, and the default target modules."""
    if model.startswith("models:/"):
        configure()  # the registry's tracking URI, and FTFLOW_HOME for the fetched copy
    quiet_libraries()
    from ftcore.models.inspect import inspect_model as inspect_report
    from ftcore.models.inspect import render_report

    print_report(lambda: inspect_report(model), render_report, as_json)


def print_report(make: Callable[[], Any], render: Callable[[Any], Any], as_json: bool) -> None:
    """The report `make` returns, as JSON (its `to_dict`) or rendered for the terminal; a UserError is one line."""
    try:
        report = make()
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(render(report))


@app.command()
def compare(
    version_a: Annotated[str, typer.Argument(help="A registered version: NAME/VERSION or NAME@ALIAS.")],
    version_b: Annotated[str, typer.Argument(help="The version to compare with it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
) -> None:
    """Print the metric differences between two registered versions (B minus A)."""
    configure()
    from ftcore.deploy.compare import compare_versions

    try:
        label_a, label_b, diffs = compare_versions(version_a, version_b)
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps([{"metric": d.metric, label_a: d.a, label_b: d.b, "change": d.change} for d in diffs],
                         indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{label_b} against {label_a}", title_justify="left")
    for column in ("metric", label_a, label_b, "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    better = {"a": "red", "b": "green", "": "white"}  # green: B does better on this metric

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    for d in diffs:
        change = "-" if d.change is None else f"[{better[d.better]}]{d.change:+.4g}[/]"
        table.add_row(d.metric, fmt(d.a), fmt(d.b), change)
    console.print(table)


REPORT_ARTIFACT = "stages/evaluate/report.html"  # where the evaluate stage logs its report in the MLflow run


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="An ftflow run id (its summary.json names the MLflow run) or an "
                                               "MLflow run id.")],
    output: Annotated[Path | None, typer.Option(help="Where to write it; default ./report-<id>.html.")] = None,
    open_: Annotated[bool, typer.Option("--open/--no-open", help="Open it in the web browser.")] = False,
) -> None:
    """Fetch the evaluation report (one HTML file) of RUN_ID from MLflow, write it and print its path."""
    configure()
    # One small file: a progress bar is noise, and would add lines to a one-line error.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import tempfile
    import webbrowser

    from ftcore import tracking

    mlflow_run_id = _mlflow_run_id(run_id)
    output = output or Path(f"report-{run_id[:8]}.html")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the output and renamed into place, so a failed download never leaves half a report.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        try:
            downloaded = tracking.download_run_artifact(mlflow_run_id, REPORT_ARTIFACT, Path(tmp))
        except FileNotFoundError:
            fail(f"run {run_id}: no evaluation report ({REPORT_ARTIFACT}); was the evaluate stage run?")
        downloaded.replace(output)
    console.print(str(output), highlight=False, soft_wrap=True)
    if open_:
        webbrowser.open(output.resolve().as_uri())


def _mlflow_run_id(run_id: str) -> str:
    """The MLflow run of an ftflow run (from its summary.json); any other id must be an MLflow run's."""
    from mlflow.exceptions import MlflowException

    from ftcore import tracking

    summary = home() / "runs" / run_id / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())["mlflow_run_id"]
    try:
        tracking.client().get_run(run_id)
    except MlflowException:
        fail(f"run {run_id}: no such run: neither an ftflow run ({summary} is missing) nor an MLflow run in "
              f"{tracking.tracking_uri()}; check the id (`ftflow run` prints the summary's path)")
    return run_id


@app.command()
def steps() -> None:
    """List the cleaning steps a recipe can use (built-in and from installed packages)."""
    from ftcore.registry import STEPS

    _print_registered(STEPS)


@app.command()
def rewards() -> None:
    """List the reward functions objective rl can use (built-in and from installed packages)."""
    from ftcore.alignment.rewards import REWARDS

    _print_registered(REWARDS)


@app.command()
def metrics() -> None:
    """List the domain metrics evaluate.domain_metrics can use (from installed packages and data_recipes/metrics)."""
    from ftcore.evaluation.domain import METRICS

    _print_registered(METRICS)


def _print_registered(registry: Registry) -> None:
    """One line per registered step, reward function or domain metric: name(params with defaults), first doc line,
    module."""
    for name, entry in sorted(registry.entries().items()):
        params = ", ".join(f"{k}={'required' if f.is_required() else repr(f.get_default(call_default_factory=True))}"
                           for k, f in entry.params.model_fields.items())
        console.print(f"[bold]{name}[/]({params})  {entry.doc}  [dim]{entry.module}[/]")


@app.command()
def export(
    model_uri: Annotated[str, typer.Argument(metavar="MODEL_URI",
                                             help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", help=f"{', '.join(EXPORT_KINDS)} (repeatable; default: int8).")] = None,
    tolerance: Annotated[float | None, typer.Option(
        help="The most a quantised export (int8, gguf_q8_0, gguf_q4_0) may lose on the primary test metric "
             "(default: deploy.export_tolerance's).")] = None,
    to: Annotated[Path | None, typer.Option(
        "--to", help="Write the export's folder here (one --kind), made first only if the version has none yet: "
                     "what vLLM, llama.cpp, Ollama or a container mounts.")] = None,
    base: Annotated[Path | None, typer.Option(
        "--base", help="With --kind adapter --to: the folder of the base export (--kind base --to) the adapter will "
                       "be served on, as vLLM's --lora-modules does; refused unless the version was trained on it.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export a registered version for deployment (docs/deploy.md): each kind becomes an MLflow model of the
    version's run (exports/KIND, servable with `mlflow models serve`) and is recorded in the version's tags."""
    configure()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report is the output
    from ftcore.deploy.config import DeployConfig
    from ftcore.deploy.export import export_registered, export_to
    from ftcore.models.registered import pin_reference

    defaults = DeployConfig()
    kinds = list(dict.fromkeys(kind or defaults.exports))
    unknown = [k for k in kinds if k not in EXPORT_KINDS]
    if unknown:
        fail(f"--kind: {', '.join(unknown)} is not an export kind; use {', '.join(EXPORT_KINDS)}")
    if to is not None and len(kinds) != 1:
        fail(f"--to: one folder holds one export; give exactly one --kind (got {', '.join(kinds)})")
    if base is not None and (to is None or kinds != ["adapter"]):
        fail("--base: names the base an adapter export is written for; give it with --kind adapter --to DIR")
    limit = defaults.export_tolerance if tolerance is None else tolerance
    try:
        ref = pin_reference(model_uri, "MODEL_URI")
        if ref.name is None:
            fail("MODEL_URI: exports belong to registered versions; give models:/NAME@ALIAS or models:/NAME/VERSION")
        if to is not None:
            folder, report = export_to(ref, kinds[0], to, limit, base)
            console.print(f"{kinds[0]} of models:/{ref.name}/{ref.version}: {folder}", highlight=False,
                          soft_wrap=True)
        else:
            report = export_registered(ref, kinds, limit)
    except UserError as e:
        fail(str(e))
    if report is None:
        return
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    for name, record in report.exports.items():
        console.print(f"{name}: {record.uri}  ({record.bytes / 2**20:.3g} MB)", highlight=False, soft_wrap=True)
    if report.int8_size_ratio is not None:
        console.print(f"int8 size: {report.int8_size_ratio:.1%} of float32", highlight=False, soft_wrap=True)
    for name, check in report.verdicts().items():
        console.print(f"{name}: {check}", highlight=False, soft_wrap=True)


# After the pipeline's commands, so that `ftflow --help` lists those first.
cli_data.register_commands(app)
cli_ops.register_commands(app)
cli_tune.register_commands(app)


def main() -> None:
    # At exit, the interpreter's final garbage collections over the ~400k objects Prefect and MLflow leave took
    # 1.5 s of every run here; frozen (moved out of the collector's sight), they are skipped. Nothing is lost: the
    # other exit handlers still flush and close logs and files, and a cycle's finaliser is not guaranteed at exit.
    atexit.register(gc.freeze)
    app()


if __name__ == "__main__":
    main()
