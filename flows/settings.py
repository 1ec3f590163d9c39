"""Embedded defaults: Prefect's ephemeral API under `$FTFLOW_HOME/prefect`, nothing to start by hand.

Must run before Prefect is imported, since Prefect reads its settings at import time. Variables the user has set
(PREFECT_API_URL, PREFECT_HOME, MLFLOW_TRACKING_URI, ...) always win.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ftcore.errors import UserError, is_user_error
from ftcore.locks import file_lock
from ftcore.paths import home
from ftcore.quiet import quiet_libraries
from ftcore.tuning.trial import Pruned

DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # start-up takes ~15 s on 2 cores
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    # Off: Prefect's print capture breaks libraries that capture stdout themselves (dill, used by datasets).
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    # MLflow 3 sends usage telemetry from a background thread by default: offline here, and nothing a run needs.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GIT_PYTHON_REFRESH": "quiet",
    # A run's output is the stage table; per-file download and weight-loading bars would bury it.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # Dask logs every scheduler, nanny and worker start and stop at INFO; the Prefect UI shows the parts' task runs.
    "DASK_LOGGING__DISTRIBUTED": "warning",
    # ftcore logs through `logging` (it never imports Prefect); this puts its records in the run's Prefect logs,
    # e.g. the command the other machines of a multi-node training run must run. Outside a run (ftflow export)
    # they go to the console only.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ftcore",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


# Unless --verbose: Prefect's console shows warnings only (its run logs still reach its server and UI: the terminal
# gets one line per stage, flows/summary.py), and no `datasets` bars for TRL's preparation of each split.
QUIET = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # For the processes a command starts (a worker's flow runs): this one filters its warnings in ftcore/quiet.py.
    "PYTHONWARNINGS": "ignore",
}

VERBOSE = "FTFLOW_VERBOSE"  # set by `ftflow --verbose`; inherited by the processes a run starts
# Below this much free space under FTFLOW_HOME a run is refused before it starts: Prefect's and MLflow's stores take
# about 6 MB when created, and a full disk at that point fails inside Prefect's server, where it cannot be reported.
MIN_FREE_BYTES = 32 * 2**20
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # the databases MLflow's SQLAlchemy store takes
TRACKING_SCHEMES = ("", "file", "http", "https", "databricks", *SQL_SCHEMES)


def configure_environment() -> None:
    """Check the environment and fill in the defaults. A bad FTFLOW_HOME, PREFECT_HOME, MLFLOW_TRACKING_URI or
    PREFECT_API_URL raises a UserError naming the variable and the fix."""
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    # Prefect creates only the last folder of PREFECT_HOME; a missing parent makes its server fail to start.
    for variable, folder in (("FTFLOW_HOME", home()), ("PREFECT_HOME", Path(os.environ["PREFECT_HOME"]).expanduser())):
        check_writable_folder(variable, folder)
    check_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
    check_prefect_api_url(os.environ.get("PREFECT_API_URL"))
    for key, value in (DEFAULTS | ({} if verbose() else QUIET)).items():
        os.environ.setdefault(key, value)
    logging.getLogger("ftcore").setLevel(logging.INFO)  # what a stage says about its work (resumed from, ...)
    quiet_libraries()
    hide_user_error_tracebacks()


def verbose() -> bool:
    return os.environ.get(VERBOSE) == "1"


PRUNED_TASK = f"exception {Pruned.__name__}: "  # Prefect's words for a task that raised it


def hide_user_error_tracebacks() -> None:
    """A user's mistake (bad data, recipe or environment, a full disk) is one line. Prefect logs a failed task's and
    flow's exception with its traceback, which would bury that line: every log record of such an error keeps its
    message and drops the traceback, unless --verbose. Done where records are made rather than in a handler's
    filter, so it holds for every logger and for the handlers Prefect configures later; a real bug keeps its
    traceback."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "hides_user_errors", False):
        return

    def record_without_user_error_traceback(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and record.exc_info[1] is not None and is_user_error(record.exc_info[1]) and not verbose():
            record.exc_info = None
        if record.levelno >= logging.ERROR and PRUNED_TASK in str(record.msg):
            # A search's pruner stopped a trial's training on purpose: Prefect reports the train task as failed
            # (so it is not cached), which is no error to show.
            record.levelno, record.levelname, record.exc_info = logging.INFO, "INFO", None
        return record

    record_without_user_error_traceback.hides_user_errors = True
    logging.setLogRecordFactory(record_without_user_error_traceback)


def check_writable_folder(variable: str, folder: Path) -> None:
    """`folder` exists (or is created) as a folder this process can write in."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{variable}={folder} is a file, not a folder: set {variable} to a folder (it is created "
                        "when missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise UserError(f"{variable}={folder}: cannot write there ({e.strerror or e}): set {variable} to a "
                        "writable folder") from None


def check_room(folder: Path) -> None:
    """Refuse to start a run on a disk that cannot even hold ftflow's own stores."""
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"FTFLOW_HOME={folder}: {free / 2**20:.1f} MB free; a run needs at least "
                        f"{MIN_FREE_BYTES // 2**20} MB there (Prefect's and MLflow's stores take about 6 MB, the "
                        "stage outputs the rest): free space there or set FTFLOW_HOME to a folder on another disk")


def check_tracking_uri(uri: str | None) -> None:
    """MLFLOW_TRACKING_URI's form, and that its server or SQLite folder is there: MLflow itself would retry an
    absent server for minutes, or fail deep inside SQLAlchemy."""
    if not uri:
        return
    parsed = urlsplit(uri)
    scheme = parsed.scheme.split("+")[0]
    shown = f"MLFLOW_TRACKING_URI={redacted(uri)}"
    if scheme not in TRACKING_SCHEMES:
        raise UserError(f"{shown}: unknown scheme {parsed.scheme!r}: use http(s)://HOST:PORT, "
                        "sqlite:///PATH, postgresql://..., or unset it for the embedded store")
    if scheme == "sqlite":
        check_sqlite_uri(shown, uri, parsed)
    elif scheme in ("http", "https", *SQL_SCHEMES):
        check_reachable(shown, parsed, "start the server, or unset MLFLOW_TRACKING_URI for the embedded store")


def check_sqlite_uri(shown: str, uri: str, parsed) -> None:
    if parsed.netloc:
        raise UserError(f"{shown}: a SQLite URL takes no user, password or host: write sqlite:///PATH (a relative "
                        "PATH) or sqlite:////PATH (an absolute one)")
    database = Path(uri.split(":///", 1)[-1].split("?", 1)[0]) if ":///" in uri else None
    if database is None or not database.name:
        raise UserError(f"{shown}: names no database file: write sqlite:///PATH/mlflow.db")
    if not database.parent.resolve().is_dir():
        raise UserError(f"{shown}: the folder {database.parent.resolve()} does not exist: create it or fix the path")


def check_prefect_api_url(url: str | None) -> None:
    if not url:
        return
    parsed = urlsplit(url)
    shown = f"PREFECT_API_URL={redacted(url)}"
    if parsed.scheme not in ("http", "https") or not parsed.hostname or "api" not in parsed.path.split("/"):
        raise UserError(f"{shown}: not a Prefect API URL: write http://HOST:4200/api, or unset it for the embedded "
                        "server")
    check_reachable(shown, parsed, "start `prefect server start`, or unset PREFECT_API_URL for the embedded server")


def check_reachable(shown: str, parsed, fix: str) -> None:
    """A TCP connection to the URL's host and port, within a few seconds."""
    default_ports = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
    host = parsed.hostname or "localhost"
    try:
        port = parsed.port or default_ports[parsed.scheme.split("+")[0]]
        socket.create_connection((host, port), timeout=5).close()
    except ValueError:
        raise UserError(f"{shown}: the port is not a number: {fix}") from None
    except OSError as e:
        raise UserError(f"{shown}: nothing answers at {host}:{port} ({e.strerror or e}): {fix}") from None


def redacted(url: str) -> str:
    """`url` with its password, if any, masked: error lines end up in logs."""
    parsed = urlsplit(url)
    if parsed.password is None:
        return url
    return urlunsplit(parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)))


def start_embedded_prefect() -> None:
    """Start Prefect's embedded server (when PREFECT_API_URL is not set) under a lock in PREFECT_HOME: it creates or
    migrates its SQLite database as it starts, and two runs starting at once on a new home would both do so. The
    server then serves this process's flows."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    with file_lock(Path(os.environ["PREFECT_HOME"]).expanduser() / ".setup.lock"):
        get_client(sync_client=True)  # starts the server and waits until it answers
