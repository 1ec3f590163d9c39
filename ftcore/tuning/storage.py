"""Where studies live: beside ftflow's other state, so that a killed search resumes and several workers share one.

By default a SQLite file in FTFLOW_HOME (`tune.db`, next to MLflow's `mlflow.db`); where MLflow's store is a
database server (MLFLOW_TRACKING_URI=postgresql://...), the same database, in a schema of its own (`ftflow_tune`):
Optuna's tables and MLflow's both keep their migrations in a table named `alembic_version`, so they cannot share
one namespace. FTFLOW_TUNE_STORAGE names another SQLAlchemy URL.

Every trial records a heartbeat while it runs; a trial whose heartbeat stops (its process was killed, its machine
lost) is failed by the next worker that looks, and the same configuration is queued again, so its run resumes from
the train stage's last checkpoint (same recipe, same stage folders) instead of counting as done.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from ftcore.paths import home

STORAGE_VARIABLE = "FTFLOW_TUNE_STORAGE"
HEARTBEAT_VARIABLE = "FTFLOW_TUNE_HEARTBEAT_S"  # how often a running trial says it lives (default 10 s)
SCHEMA = "ftflow_tune"
SERVER_SCHEMES = ("postgresql",)  # the servers whose databases hold schemas


def storage_url() -> str:
    """The study database's URL: FTFLOW_TUNE_STORAGE, else MLflow's database server, else FTFLOW_HOME/tune.db."""
    if url := os.environ.get(STORAGE_VARIABLE):
        return url
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if _scheme(tracking) in SERVER_SCHEMES:
        return tracking
    return f"sqlite:///{home() / 'tune.db'}"


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+")[0]  # postgresql+psycopg -> postgresql


def heartbeat_s() -> int:
    return int(os.environ.get(HEARTBEAT_VARIABLE, "10"))


def open_storage():
    """Optuna's storage on `storage_url()`, failing a trial whose heartbeat stopped three beats ago and queueing its
    configuration again."""
    import optuna

    url = storage_url()
    engine = {}
    if _scheme(url) in SERVER_SCHEMES:
        _create_schema(url)
        engine = {"connect_args": {"options": f"-csearch_path={SCHEMA}"}}
    elif _scheme(url) == "sqlite":
        engine = {"connect_args": {"timeout": 60}}  # several workers write one SQLite file: wait for the lock
        home().mkdir(parents=True, exist_ok=True)
    beat = heartbeat_s()
    with optuna_notes_silenced():
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=beat, grace_period=3 * beat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))


def _create_schema(url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    finally:
        engine.dispose()


@contextmanager
def optuna_notes_silenced() -> Iterator[None]:
    """Without the notes Optuna prints on every ask: heartbeats and stale-trial retries are "experimental" (since
    Optuna 2.8 and 3.0; ftflow pins the version), and meant for `Study.optimize` (ftflow asks and tells itself,
    beating the heartbeat as optimize does)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        yield


@contextmanager
def heartbeat(storage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every `heartbeat_s()` while the block runs (Optuna's `optimize` does this for
    its own trials; ftflow asks and tells, so it beats itself)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(heartbeat_s()):
                return

    thread = threading.Thread(target=beat, name=f"trial-{trial_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
