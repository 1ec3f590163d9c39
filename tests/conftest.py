"""Shared fixtures: offline, isolated state per test, Prefect's test harness once per session.

Environment is set at import time, before Prefect is imported anywhere, because Prefect reads settings on import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ftflow-tests-"))
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "FTFLOW_HOME": str(_SESSION_HOME / "ftflow"),
    "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
    # Runs use Prefect's test harness (or, in a subprocess, its temporary server), never the local server that
    # `ftflow run` starts and leaves running (flows/prefect_server.py): a test leaves no process behind.
    "FTFLOW_PREFECT_SERVER": "temporary",
})
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

from flows.settings import configure_environment  # noqa: E402

configure_environment()

# `browser_page` (a headless chromium page) and its `screenshot` helper, for any test that requests it.
pytest_plugins = ["tests.browser"]

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO / "data_recipes" / "recipes" / "clinical_qa.yaml"
SHARED_DATA = REPO.parent / "shared" / "data"

# A model and schedule small enough for a test, on the demo data (exercises --set overrides as well).
TINY_OVERRIDES = [
    "model.scratch.hidden_size=96",
    "model.scratch.intermediate_size=192",
    "model.scratch.num_hidden_layers=2",
    "model.scratch.num_attention_heads=2",
    "model.scratch.vocab_size=400",
    "train.epochs=12",
    "train.batch_size=16",
    "train.learning_rate=1e-2",
    "train.logging_steps=5",
    "train.eval_steps=null",  # the demo evaluates every 50 steps for `ftflow tune`'s pruner; a test once, at the end
    "evaluate.max_new_tokens=24",
    "monitor.probe_size=5",
    "stages.retry_delay_s=0",
]


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema and nothing else, made once: a new store migrates its schema for about
    a second, which hundreds of tests would pay again."""
    from ftcore.tracking import client

    home = tmp_path_factory.mktemp("mlflow-template")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTFLOW_HOME", str(home))
        client()
    return home / "mlflow.db"


@pytest.fixture(autouse=True)
def ftflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """Each test gets its own FTFLOW_HOME: stage outputs, caches, MLflow store and summaries. The store starts as a
    copy of `empty_mlflow_store`, except for tests marked `new_home` (what a first run on a new machine meets)."""
    home = tmp_path / "ftflow"
    monkeypatch.setenv("FTFLOW_HOME", str(home))
    if request.node.get_closest_marker("new_home") is None:
        home.mkdir()
        shutil.copyfile(request.getfixturevalue("empty_mlflow_store"), home / "mlflow.db")
    return home


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (a user's own clone)")
    return SHARED_DATA


@pytest.fixture
def postgres_url() -> str:
    """A reachable PostgreSQL, from FTFLOW_TEST_POSTGRES_URL (`source .ci/postgres.sh` starts one and sets it).

    Without one the test is skipped locally, but fails in CI (CI=true): there a skip would hide an untested reader.
    """
    import socket

    from sqlalchemy.engine import make_url

    url = os.environ.get("FTFLOW_TEST_POSTGRES_URL")
    problem = "FTFLOW_TEST_POSTGRES_URL is not set"
    if url:
        parsed = make_url(url)
        try:
            socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout=3).close()
            return url
        except OSError as e:
            problem = f"no PostgreSQL at {parsed.host}:{parsed.port or 5432} ({e})"
    message = f"{problem}; run `source .ci/postgres.sh` first"
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI: {message}")
    pytest.skip(message)
