"""`ftflow`: run, validate and inspect recipes. Errors a user can cause print one line each and exit with code 2;
a failed stage exits with code 1 after naming the stage and the reason."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer 0.29 vendors click: its own classes
from typer.core import TyperGroup

from flows.settings import VERBOSE, check_room, configure_environment, start_embedded_prefect, verbose
from ftcore.config import STAGES, Stage, load_recipe
from ftcore.data.sources.config import describe_error
from ftcore.errors import RecipeError, UserError, storage_error
from ftcore.paths import home
from ftcore.quiet import quiet_libraries

console = Console()
err_console = Console(stderr=True)


class OneLineUsageErrors(TyperGroup):
    """A usage mistake (an option that is not a number, a missing argument, an unknown option) is one `error:` line
    and exit 2, like every other user error, instead of click's boxed usage text."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError:
            raise
        except UsageError as e:
            where = f" (`{e.ctx.command_path} --help` lists what it takes)" if e.ctx else ""
            err_console.print(f"[red]error:[/] {e.format_message()}{where}", highlight=False, soft_wrap=True)
            result = e.exit_code
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(cls=OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  help="Fine-tune language models as a Prefect flow.")

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: a.b=value (repeatable).")]


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
    if until is not None and len(recipes) > 1:
        _fail("--until: a chain runs every recipe to the end; give one recipe to stop early")
    if until is not None and until not in {s.value for s in STAGES}:  # checked here: click's own error is a box
        _fail(f"--until: {until!r} is not a stage; use one of {', '.join(s.value for s in STAGES)}")
    stop_after = None if until is None else Stage(until)
    for recipe in recipes:
        loaded = _validated(recipe, overrides)  # fail fast, before Prefect's server starts
        if stop_after is None or STAGES.index(stop_after) >= STAGES.index(Stage.train):
            _check_hardware(loaded, recipe, fail=True)
    _configure()
    from flows.chain import chain
    from flows.finetune import StageFailed, finetune
    from flows.summary import render_table

    try:
        check_room(home())
        start_embedded_prefect()
        if len(recipes) == 1:
            summaries = [finetune(str(recipes[0]), overrides, stop_after)]
        else:
            summaries = chain([str(r) for r in recipes], overrides)
    except StageFailed as failed:
        _report(failed.summary, as_json, render_table)
        err_console.print(f"[red]error:[/] {failed.summary['failure']}", highlight=False, soft_wrap=True)
        # Bad data or recipe (the user's to fix) exits 2 like any user error; anything else is a failure (1).
        raise typer.Exit(2 if failed.summary["failure_is_user_error"] else 1) from None
    except UserError as e:
        _fail(str(e))
    except Exception as e:  # a full or read-only disk anywhere in the run (MLflow's store, a summary) is one line
        problem = storage_error(e)
        if problem is None:
            raise
        _fail(str(problem))
    for summary in summaries:
        _report(summary, as_json and len(summaries) == 1, render_table)
    if as_json and len(summaries) > 1:
        print(json.dumps(summaries, indent=2))


def _report(summary: dict, as_json: bool, render_table) -> None:
    out = err_console if as_json else console
    out.print(render_table(summary))
    model = summary.get("model")
    if model:
        out.print(f"model [bold]{model['name']}[/] version [bold]{model['version']}[/] "
                  f"aliases: {', '.join(model['aliases'])}")
        champion = "champion" in model["aliases"]
        out.print(f"gate {'[green]passed' if champion else '[yellow]did not pass'}[/]: {summary['gate']['reason']}")
        if champion:
            out.print(f"champion version: {model['version']}")
    out.print(f"summary: {home() / 'runs' / summary['run_id'] / 'summary.json'}")
    if as_json:
        print(json.dumps(summary, indent=2))


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Check RECIPE without running it: exit 0, or list every problem and exit 2."""
    loaded = _validated(recipe, set_ or [])
    console.print(f"[green]ok[/] {recipe}: recipe {loaded.name!r}, task {loaded.task}, "
                  f"{len(loaded.data.sources)} source(s), method {loaded.method.name}")
    _check_hardware(loaded, recipe, fail=False)  # the recipe may be meant for other hardware: warn only


def _check_hardware(loaded, recipe: Path, fail: bool) -> None:
    """Whether this machine can train in the recipe's train.mixed_precision (fp16 needs a CUDA GPU)."""
    from ftcore.training.train import check_hardware

    try:
        check_hardware(loaded.train)
    except UserError as e:
        if fail:
            _fail(f"{recipe}: {e}")
        err_console.print(f"[yellow]warning:[/] {recipe}: {e} (on this machine)", highlight=False, soft_wrap=True)


@app.command()
def plan(
    recipe: RecipeArg,
    set_: SetOpt = None,
    memory_gb: Annotated[float | None, typer.Option(
        "--memory-gb", min=0.001, help="Memory budget in GB (10^9 bytes); default: the GPU's, else the RAM.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Estimate parameters, memory and compute of RECIPE's model per fine-tuning method here, and recommend one."""
    loaded = _validated(recipe, set_ or [])
    quiet_libraries()  # plain library calls follow: Prefect is neither imported nor started
    from ftcore.planning.plan import make_plan
    from ftcore.planning.report import render_plan

    try:
        result = make_plan(loaded, recipe, memory_gb)
    except UserError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        console.print(render_plan(result))


@app.command()
def compare(
    version_a: Annotated[str, typer.Argument(help="A registered version: NAME/VERSION or NAME@ALIAS.")],
    version_b: Annotated[str, typer.Argument(help="The version to compare with it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
) -> None:
    """Print the metric differences between two registered versions (B minus A)."""
    _configure()
    from ftcore.deploy.compare import compare_versions

    try:
        label_a, label_b, diffs = compare_versions(version_a, version_b)
    except UserError as e:
        _fail(str(e))
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
    _configure()
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
            _fail(f"run {run_id}: no evaluation report ({REPORT_ARTIFACT}); was the evaluate stage run?")
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
        _fail(f"run {run_id}: no such run: neither an ftflow run ({summary} is missing) nor an MLflow run in "
              f"{tracking.tracking_uri()}; check the id (`ftflow run` prints the summary's path)")
    return run_id


@app.command()
def steps() -> None:
    """List the cleaning steps a recipe can use (built-in and from installed packages)."""
    from ftcore.registry import discover_steps

    _print_registered(discover_steps())


@app.command()
def rewards() -> None:
    """List the reward functions task rl can use (built-in and from installed packages)."""
    from ftcore.alignment.rewards import discover_rewards

    _print_registered(discover_rewards())


@app.command()
def metrics() -> None:
    """List the domain metrics evaluate.domain_metrics can use (from installed packages and data_recipes/metrics)."""
    from ftcore.evaluation.domain import discover_metrics

    _print_registered(discover_metrics())


def _print_registered(entries: dict) -> None:
    """One line per registered step, reward function or domain metric: name(params with defaults), first doc line,
    module."""
    for name, entry in sorted(entries.items()):
        params = ", ".join(f"{k}={'required' if f.is_required() else repr(f.get_default(call_default_factory=True))}"
                           for k, f in entry.params.model_fields.items())
        console.print(f"[bold]{name}[/]({params})  {entry.doc}  [dim]{entry.module}[/]")


@app.command()
def export(
    model_uri: Annotated[str, typer.Argument(metavar="MODEL_URI",
                                             help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", help="adapter, merged, merged_bf16 or int8 (repeatable; default: int8).")] = None,
    tolerance: Annotated[float | None, typer.Option(
        help="The most int8 may lose on the primary test metric (default: deploy.int8_tolerance's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export a registered version for deployment (docs/deploy.md): each kind becomes an MLflow model of the
    version's run (exports/KIND, servable with `mlflow models serve`) and is recorded in the version's tags."""
    _configure()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report is the output
    from typing import get_args

    from ftcore.deploy.export import export_registered
    from ftcore.evaluate_config import DeployConfig, ExportKind
    from ftcore.models.registered import pin_reference

    defaults = DeployConfig()
    kinds = kind or defaults.exports
    unknown = [k for k in kinds if k not in get_args(ExportKind)]
    if unknown:
        _fail(f"--kind: {', '.join(unknown)} is not an export kind; use {', '.join(get_args(ExportKind))}")
    try:
        ref = pin_reference(model_uri, "MODEL_URI")
        if ref.name is None:
            _fail("MODEL_URI: exports belong to registered versions; give models:/NAME@ALIAS or models:/NAME/VERSION")
        report = export_registered(ref, list(dict.fromkeys(kinds)), defaults.int8_tolerance if tolerance is None
                                   else tolerance)
    except UserError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    for name, record in report.exports.items():
        console.print(f"{name}: {record.uri}  ({record.bytes / 2**20:.3g} MB)", highlight=False, soft_wrap=True)
    if report.int8_size_ratio is not None:
        check = report.int8_verdict()["export.int8.check"]
        console.print(f"int8 size: {report.int8_size_ratio:.1%} of float32; {check}", highlight=False, soft_wrap=True)


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000) -> None:
    """Start the MLflow UI on ftflow's store and say how to open Prefect's."""
    _configure()
    from ftcore import tracking

    uri = tracking.tracking_uri()
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {uri})")
    console.print("Prefect UI: run `prefect server start` in another terminal with the same PREFECT_HOME "
                  f"({os.environ['PREFECT_HOME']}), then open http://127.0.0.1:4200")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port)]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.artifact_root()]
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def serve(
    model_uri: Annotated[str, typer.Argument(
        metavar="MODEL_URI", help="models:/NAME@ALIAS (reloads when the alias moves), models:/NAME/VERSION or a "
                                  "model folder.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback auth is on by default.")] = "127.0.0.1",
    token: Annotated[str | None, typer.Option(
        help="Bearer token clients must send (default: $FTFLOW_SERVE_TOKEN; a random one beyond loopback).")] = None,
    config: Annotated[Path | None, typer.Option(help="Serving settings (YAML; see docs/serving.md).")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Overrides batching.max_batch_size.")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Overrides batching.max_wait_ms.")] = None,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="Answer one request at a time.")] = False,
    variant: Annotated[str | None, typer.Option(
        help="model, or an export of the version: int8 (8-bit, for CPUs), merged, merged_bf16, adapter.")] = None,
) -> None:
    """Serve a model over HTTP: OpenAI-compatible completions and chat, classify, health, Prometheus metrics."""
    _configure()
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ftcore.serve_config import ServeConfig, load_serve_config
    from ftcore.serving.server import serve as serve_model

    try:
        cfg = load_serve_config(config)
        batching = {k: v for k, v in {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms,
                                      "enabled": False if no_batching else None}.items() if v is not None}
        updates = {"batching": cfg.batching.model_dump() | batching} | ({"variant": variant} if variant else {})
        cfg = ServeConfig.model_validate(cfg.model_dump() | updates)
        serve_model(model_uri, cfg, host=host, port=port, token=token)
    except UserError as e:
        _fail(str(e))
    except ValidationError as e:
        _fail("; ".join(map(describe_error, e.errors())))


@app.command()
def monitor(
    model_uri: Annotated[str, typer.Argument(metavar="MODEL_URI", help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
    recipe: Annotated[Path, typer.Option(help="The recipe whose monitor section and toxicity scorer apply.")],
    endpoint: Annotated[str | None, typer.Option(help="The live endpoint (default: the recipe's monitor.endpoint).")]
    = None,
    window: Annotated[str | None, typer.Option(help="How far back: 30m, 1h, 1d (default: monitor.window).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the monitor flow once: the endpoint's last window against the recipe's objectives (docs/monitoring.md).
    Exits 1 when an objective is breached, so a script or cron job can act on it."""
    _validated(recipe, [])
    import re

    from flows.monitor import MODEL_PATTERN, WINDOW_PATTERN
    from flows.monitor import monitor as monitor_flow

    # Checked here against the flow's own patterns: the flow's check would end in a traceback.
    if not re.match(MODEL_PATTERN, model_uri):
        _fail(f"MODEL_URI: {model_uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    if window is not None and not re.match(WINDOW_PATTERN, window):
        _fail(f"--window: {window!r} is not a duration such as 90s, 30m, 1h or 1d")
    _configure()
    quiet_libraries()

    try:
        result = monitor_flow(model=model_uri, recipe=str(recipe), endpoint=endpoint, window=window)
    except UserError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items() if isinstance(v, int | float))
        console.print(f"{result['model']} v{result['version']}: {shown}")
        if result["not_measured"]:
            console.print(f"not measured: {', '.join(result['not_measured'])}")
        console.print(f"[red]breached: {', '.join(result['breaches'])}[/]" if result["breaches"]
                      else "[green]every measured objective met[/]")
        console.print(f"report: {result['report']}")
    if result["breaches"]:
        raise typer.Exit(1)


PrefectFileOpt = Annotated[Path | None, typer.Option("--file", help="Deployments file (default infra/prefect.yaml).")]
RecipeOpt = Annotated[str | None, typer.Option(help="The recipe every deployment runs (default: the file's).")]


@app.command(name="deploy")
def deploy_flows(
    file: PrefectFileOpt = None,
    work_pool: Annotated[str | None, typer.Option(help="Work pool for every deployment (default: the file's).")]
    = None,
    recipe: RecipeOpt = None,
    retrain_cron: Annotated[str | None, typer.Option(help="Cron of the retrain deployment.")] = None,
    monitor_cron: Annotated[str | None, typer.Option(help="Cron of the monitor deployment.")] = None,
) -> None:
    """Register the finetune, retrain and monitor deployments with the Prefect server (PREFECT_API_URL); run them
    with `ftflow worker`."""
    _configure()
    from flows.deployments import PREFECT_FILE, load_deployments, register

    crons = {k: v for k, v in {"retrain": retrain_cron, "monitor": monitor_cron}.items() if v}
    try:
        specs = load_deployments(file or PREFECT_FILE, crons, recipe)
        ids = register(specs, work_pool)
    except UserError as e:
        _fail(str(e))
    for spec, deployment_id in zip(specs, ids, strict=True):
        when = ", ".join(s.cron for s in spec.schedules) or "on demand"
        console.print(f"{spec.flow_name}/{spec.name}  {when}  pool {work_pool or spec.work_pool.name}  "
                      f"[dim]{deployment_id}[/]")


@app.command(name="serve-flows")
def serve_flows(file: PrefectFileOpt = None, recipe: RecipeOpt = None) -> None:
    """Serve the finetune, retrain and monitor deployments from this process: schedules and dashboard runs on one
    machine, no work pool or worker needed."""
    _configure()
    from prefect import serve as prefect_serve

    from flows.deployments import PREFECT_FILE, load_deployments, runner_deployments

    try:
        deployments = runner_deployments(load_deployments(file or PREFECT_FILE, recipe=recipe))
    except UserError as e:
        _fail(str(e))
    prefect_serve(*deployments)


@app.command()
def worker(pool: Annotated[str, typer.Option(help="The work pool to take flow runs from.")] = "ftflow-process") -> None:
    """Start a Prefect process worker on POOL (what `ftflow deploy` registered runs there)."""
    _configure()
    raise typer.Exit(subprocess.call([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                                      "--type", "process"]))


def _validated(recipe: Path, overrides: list[str]):
    try:
        return load_recipe(recipe, overrides)
    except RecipeError as e:
        for problem in e.problems:
            err_console.print(f"[red]error:[/] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _configure() -> None:
    """The environment checked and completed (flows/settings.py): a bad variable is one line."""
    try:
        configure_environment()
    except UserError as e:
        _fail(str(e))


def _fail(message: str) -> None:
    if verbose() and sys.exc_info()[1] is not None:  # called while handling the error: show where it came from
        traceback.print_exc()
    err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
