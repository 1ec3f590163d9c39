"""`ftflow`'s commands for what runs beside the pipeline: the MLflow UI, the model server, the monitor, and the
Prefect deployments with the processes that run them. `register_commands` adds them to flows/cli.py's app."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from flows.cli_server import server_app
from flows.cli_shared import configure, connect_prefect, console, fail, validated
from flows.settings import verbose
from ftcore.errors import UserError
from ftcore.quiet import quiet_libraries
from ftcore.schema import describe_error


def register_commands(app: typer.Typer) -> None:
    """Adds these commands to APP, in the order `ftflow --help` lists them (after the pipeline's)."""
    app.command()(ui)
    app.command()(serve)
    app.command()(chat)
    app.command()(monitor)
    app.command(name="deploy")(deploy_flows)
    app.command(name="serve-flows")(serve_flows)
    app.command()(worker)
    app.add_typer(server_app, name="server")


def ui(port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000) -> None:
    """Start the MLflow UI on ftflow's store and Prefect's (the local Prefect server), and print both URLs; Ctrl-C
    stops every process this command started."""
    configure()
    from ftcore import tracking

    prefect = connect_prefect(always=True)
    prefect_url = prefect.url if prefect else os.environ["PREFECT_API_URL"].removesuffix("/").removesuffix("/api")
    uri = tracking.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port)]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.artifact_root()]
    # Its own session: Ctrl-C reaches this process, which stops MLflow's whole tree (its server's workers too).
    # Its request log would bury the two URLs: shown with --verbose only.
    output = None if verbose() else subprocess.DEVNULL
    mlflow_ui = subprocess.Popen(cmd, start_new_session=True, stdout=output, stderr=output)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _wait_until_answers(f"http://127.0.0.1:{port}", mlflow_ui)
        console.print(f"MLflow UI:  http://127.0.0.1:{port}  (store {uri})", highlight=False, soft_wrap=True)
        console.print(f"Prefect UI: {prefect_url}" + ("" if prefect is None or prefect.started else
                                                       "  (already running; left running)"), highlight=False)
        console.print("Ctrl-C stops them.")
        mlflow_ui.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(mlflow_ui, signal.SIGTERM, whole_session=True)
        if prefect is not None:
            from flows.prefect_server import release

            release(prefect)


def _wait_until_answers(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            fail(f"the MLflow UI did not start at {url}; is the port taken? (--port picks another)")
        time.sleep(0.3)


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
    image_url_host: Annotated[list[str] | None, typer.Option(
        "--image-url-host", metavar="HOST", help="A host whose http(s) image URLs chat requests may name (repeat "
                                                 "for more; adds to images.url_hosts). Default: none, images come "
                                                 "inline as data: URLs.")] = None,
    adapter: Annotated[list[str] | None, typer.Option(
        "--adapter", metavar="NAME=URI", help="A registered LoRA version answered on this base when a request's "
                                              "`model` is NAME: NAME=models:/MODEL@ALIAS (followed when the alias "
                                              "moves) or NAME=models:/MODEL/VERSION; repeat for more.")] = None,
    all_versions: Annotated[list[str] | None, typer.Option(
        "--all-versions", metavar="MODEL", help="Every version of the registered MODEL that is a LoRA adapter of "
                                                "this base is answered as `model` MODEL/VERSION (new versions join "
                                                "while serving); repeat for more.")] = None,
    dtype: Annotated[str | None, typer.Option(
        help="The weights' type in memory: float32 (as written), bfloat16 or float16 (half the memory; on a GPU "
             "faster too). Overrides the config's dtype.")] = None,
    admin_token: Annotated[str | None, typer.Option(
        help="Token of the admin routes (POST/DELETE /admin/adapters; default: $FTFLOW_ADMIN_TOKEN); without one "
             "they are off.")] = None,
) -> None:
    """Serve a model over HTTP: OpenAI-compatible completions and chat, classify, health, Prometheus metrics."""
    configure()
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ftcore.serving.adapters import parse_adapter
    from ftcore.serving.config import ServeConfig, load_serve_config
    from ftcore.serving.server import serve as serve_model

    try:
        cfg = load_serve_config(config)
        batching = {k: v for k, v in {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms,
                                      "enabled": False if no_batching else None}.items() if v is not None}
        updates = {"batching": cfg.batching.model_dump() | batching} | ({"variant": variant} if variant else {}) | \
            ({"dtype": dtype} if dtype else {})
        if image_url_host:
            updates["images"] = cfg.images.model_dump() | {"url_hosts": [*cfg.images.url_hosts, *image_url_host]}
        if adapter or all_versions:
            updates["adapters"] = cfg.adapters.model_dump() | {
                "serve": cfg.adapters.serve | dict(map(parse_adapter, adapter or [])),
                "every_version": [*cfg.adapters.every_version, *(all_versions or [])]}
        cfg = ServeConfig.model_validate(cfg.model_dump() | updates)
        serve_model(model_uri, cfg, host=host, port=port, token=token, admin_token=admin_token)
    except UserError as e:
        fail(str(e))
    except ValidationError as e:
        fail("; ".join(map(describe_error, e.errors())))


def chat(
    model_uri: Annotated[str, typer.Argument(
        metavar="MODEL_URI", help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder.")],
    variant: Annotated[str, typer.Option(
        help="model, or an export of the version: int8, merged, merged_bf16, adapter.")] = "model",
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate at most per answer.")] = 64,
    temperature: Annotated[float, typer.Option(min=0, max=2, help="0: greedy (the same answer every time).")] = 0.0,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1.")] = "cpu",
) -> None:
    """Chat with a model in the terminal, asked as it was trained (its chat template, or the recipe's prompt
    template). /clear forgets the conversation; /exit or Ctrl-D ends. Answers print whole (no streaming)."""
    configure()
    quiet_libraries()
    from ftcore.serving.chat import Conversation
    from ftcore.serving.source import model_source

    try:
        source = model_source(model_uri, variant, device)
        version = source.current_version()
        conversation = Conversation(source.load(version), max_tokens, temperature)
    except UserError as e:
        fail(str(e))
    typer.echo(f"{source.name} v{version}: {conversation.describe()}. /clear forgets, /exit or Ctrl-D ends.")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            typer.echo()
            return
        if text == "/exit":
            return
        if text == "/clear":
            conversation.clear()
        elif text:
            typer.echo(f"model> {conversation.ask(text).text.strip()}")


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
    validated(recipe, [], model_folder="skip")  # the endpoint serves the registered model, not the recipe's base
    _check_monitor_arguments(model_uri, window)
    configure()
    quiet_libraries()
    from flows.monitor import monitor as monitor_flow

    try:
        result = monitor_flow(model=model_uri, recipe=str(recipe), endpoint=endpoint, window=window)
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_monitor_result(result)
    if result["breaches"]:
        raise typer.Exit(1)


def _check_monitor_arguments(model_uri: str, window: str | None) -> None:
    """Checked here against the monitor flow's own patterns: the flow's check would end in a traceback."""
    import re

    from flows.monitor import MODEL_PATTERN, WINDOW_PATTERN

    if not re.match(MODEL_PATTERN, model_uri):
        fail(f"MODEL_URI: {model_uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    if window is not None and not re.match(WINDOW_PATTERN, window):
        fail(f"--window: {window!r} is not a duration such as 90s, 30m, 1h or 1d")


def _print_monitor_result(result: dict) -> None:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items() if isinstance(v, int | float))
    console.print(f"{result['model']} v{result['version']}: {shown}")
    if result["not_measured"]:
        console.print(f"not measured: {', '.join(result['not_measured'])}")
    console.print(f"[red]breached: {', '.join(result['breaches'])}[/]" if result["breaches"]
                  else "[green]every measured objective met[/]")
    console.print(f"report: {result['report']}")


PrefectFileOpt = Annotated[Path | None, typer.Option("--file", help="Deployments file (default infra/prefect.yaml).")]
RecipeOpt = Annotated[str | None, typer.Option(help="The recipe every deployment runs (default: the file's).")]


def deploy_flows(
    file: PrefectFileOpt = None,
    work_pool: Annotated[str | None, typer.Option(help="Work pool for every deployment (default: the file's).")]
    = None,
    recipe: RecipeOpt = None,
    retrain_cron: Annotated[str | None, typer.Option(help="Cron of the retrain deployment.")] = None,
    monitor_cron: Annotated[str | None, typer.Option(help="Cron of the monitor deployment.")] = None,
) -> None:
    """Register the finetune, retrain and monitor deployments with the Prefect server (PREFECT_API_URL, else the
    local one `ftflow ui` shows); run them with `ftflow worker`."""
    configure()
    connect_prefect()
    from flows.deployments import PREFECT_FILE, load_deployments, register

    crons = {k: v for k, v in {"retrain": retrain_cron, "monitor": monitor_cron}.items() if v}
    try:
        specs = load_deployments(file or PREFECT_FILE, crons, recipe)
        ids = register(specs, work_pool)
    except UserError as e:
        fail(str(e))
    for spec, deployment_id in zip(specs, ids, strict=True):
        when = ", ".join(s.cron for s in spec.schedules) or "on demand"
        console.print(f"{spec.flow_name}/{spec.name}  {when}  pool {work_pool or spec.work_pool.name}  "
                      f"[dim]{deployment_id}[/]")


def serve_flows(file: PrefectFileOpt = None, recipe: RecipeOpt = None) -> None:
    """Serve the finetune, retrain and monitor deployments from this process: schedules and dashboard runs on one
    machine, no work pool or worker needed. On PREFECT_API_URL's server, else the local one `ftflow ui` shows."""
    configure()
    connect_prefect()
    from prefect import serve as prefect_serve

    from flows.deployments import PREFECT_FILE, load_deployments, runner_deployments

    try:
        deployments = runner_deployments(load_deployments(file or PREFECT_FILE, recipe=recipe))
    except UserError as e:
        fail(str(e))
    prefect_serve(*deployments)


def worker(pool: Annotated[str, typer.Option(help="The work pool to take flow runs from.")] = "ftflow-process") -> None:
    """Start a Prefect process worker on POOL (what `ftflow deploy` registered runs there), taking runs from
    PREFECT_API_URL's server, else from the local one `ftflow ui` shows."""
    configure()
    connect_prefect()  # the worker's process inherits PREFECT_API_URL; this one holds the server while it lives
    # Its own session, so that a stop reaches it once, from here: Ctrl-C in the terminal and a service manager's
    # SIGTERM (which reaches this process only: the worker would poll on, orphaned) both become one SIGINT.
    process = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                                "--type", "process"], start_new_session=True)
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda *_: threading.Thread(target=stop_process, args=(process, signal.SIGINT),
                                                        daemon=True).start())
    raise typer.Exit(process.wait())


# How long a child started in its own session gets to stop after the signal before its whole group is killed: a stop
# that hangs (a worker stuck in a call to its server) must not keep a service manager or a terminal waiting.
STOP_GRACE_S = 20


def stop_process(process: subprocess.Popen, stop: signal.Signals, whole_session: bool = False) -> None:
    """Send STOP to `process` (or to every process of the session it leads), and kill the session if `process` still
    runs after STOP_GRACE_S."""
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if whole_session else os.kill)(process.pid, stop)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
