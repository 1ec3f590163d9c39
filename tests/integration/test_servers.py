"""The team set-up for real, on one machine: PostgreSQL, `prefect server start` and `mlflow server` (both on
PostgreSQL) on loopback ports, the deployments registered, a process worker, a `finetune` run started through the
API as the dashboard's Run button starts it, the new version in the MLflow server's registry, and the scheduled
monitor's breach of that champion, which makes the server's automation create a `retrain` run. Then the server's
scheduler: runs of the cron deployments created, and one executed by a worker. Every server is stopped at the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from flows.deployments import PREFECT_FILE
from tests.conftest import DEMO_RECIPE, REPO, TINY_OVERRIDES

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)


def start_worker(servers: dict, pool: str, log: Path, *options: str) -> subprocess.Popen:
    """A Prefect process worker on POOL, stopped with the servers at the end."""
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", *options],
                   servers["env"], log)
    servers["processes"].append(worker)
    return worker


def ftflow_deploy(env: dict[str, str], *options: str) -> None:
    """`ftflow deploy` against the test's Prefect server: it must succeed."""
    deployed = subprocess.run([str(BIN / "ftflow"), "deploy", *options], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Two fresh databases on the test PostgreSQL, one for Prefect, one for MLflow (their tables would clash)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    raw = os.environ.get("FTFLOW_TEST_POSTGRES_URL")
    if not raw:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is required in CI: run `source .ci/postgres.sh` first")
        pytest.skip("FTFLOW_TEST_POSTGRES_URL is not set; run `source .ci/postgres.sh` first")
    url = make_url(raw).set(password=os.environ["FTFLOW_TEST_PGPASSWORD"])
    names = {"prefect": f"it_prefect_{uuid.uuid4().hex[:8]}", "mlflow": f"it_mlflow_{uuid.uuid4().hex[:8]}"}
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield {"prefect": url.set(drivername="postgresql+asyncpg", database=names["prefect"]).render_as_string(False),
           "mlflow": url.set(database=names["mlflow"]).render_as_string(False)}
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def servers(databases, tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PREFECT_HOME": str(root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": databases["prefect"],
            "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(prefect_port),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            # The scheduler's main loop runs every 60 s by default; a short loop keeps the schedule test short.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    processes = [
        start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)], env,
              root / "prefect.log"),
        start([str(BIN / "mlflow"), "server", "--backend-store-uri", databases["mlflow"], "--artifacts-destination",
               (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(mlflow_port)], env,
              root / "mlflow.log"),
    ]
    try:
        wait_for(f"http://127.0.0.1:{prefect_port}/api/health", processes[0], root / "prefect.log")
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", processes[1], root / "mlflow.log")
        client_env = {k: v for k, v in env.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
        client_env |= {"PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                       "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                       "FTFLOW_HOME": str(root / "ftflow"), "HF_HUB_OFFLINE": "1"}
        yield {"env": client_env, "root": root, "processes": processes}
    finally:
        stop(processes)


def test_a_dashboard_run_registers_a_version_and_a_breach_creates_a_retrain_run(servers, monkeypatch):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.monitor import announce_breach

    env, root = servers["env"], servers["root"]
    ftflow_deploy(env, "--recipe", str(DEMO_RECIPE))
    worker = start_worker(servers, "ftflow-process", root / "worker.log")
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        from prefect.deployments import run_deployment

        # As the dashboard's Run button: the recipe's deployment, with the form's parameters.
        run = run_deployment("finetune/clinical-qa", parameters={"overrides": TINY_OVERRIDES,
                                                                  "options": {"learning_rate": 0.01}}, timeout=600)
        assert run.state.is_completed(), (run.state, (root / "worker.log").read_text()[-3000:])

        registry = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        champion = registry.get_model_version_by_alias("clinical-qa", "champion")
        assert champion.version == "1" and champion.description.startswith("**Gate passed**")
        assert set(registry.get_model_version("clinical-qa", "1").aliases) == {"champion", "challenger"}
        # The form's change, compared in the worker with what the deployment's form showed, recorded with the run.
        tags = registry.get_run(champion.run_id).data.tags
        assert json.loads(tags["ftflow.overrides"]) == [*TINY_OVERRIDES, "train.learning_rate=0.01"]

        stop([worker])  # the retrain run the trigger creates stays scheduled: no need to train again here
        with get_client(sync_client=True) as client:
            retrain = client.read_deployment_by_name("retrain/retrain")
        # As the scheduled monitor reports a breach of the champion (which it reads from the MLflow server).
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        announce_breach("clinical-qa", champion.version, ["latency_p95_s"], {"latency_p95_s": 9.0},
                        root / "report.html", "schedule")
        created = wait_for_runs_of(retrain.id)
    assert created[0].parameters["recipe_path"] == str(DEMO_RECIPE)


def test_the_dashboard_form_opens_with_the_recipe_s_values(servers, browser_page):
    """Deployments -> clinical-qa -> Run -> Custom run, in a real browser: every field of the options shows the
    recipe's value at once (no type picker to toggle first)."""
    from flows.options import RunOptions
    from ftcore.recipe import load_recipe
    from tests.browser import screenshot

    env = servers["env"]
    ftflow_deploy(env)
    with httpx.Client(base_url=env["PREFECT_API_URL"]) as api:
        deployment = api.get("/deployments/name/finetune/clinical-qa").json()
    browser_page.set_viewport_size({"width": 1400, "height": 2600})  # the whole form, for the screenshot
    browser_page.goto(f"{env['PREFECT_API_URL'].removesuffix('/api')}/deployments/deployment/{deployment['id']}/run")
    browser_page.get_by_text("Max New Tokens").wait_for(timeout=60_000)
    browser_page.wait_for_load_state("networkidle")
    shown = browser_page.eval_on_selector_all("input[type=number], textarea", "els => els.map(e => e.value)")
    recipe = RunOptions.of_recipe(load_recipe(DEMO_RECIPE), DEMO_RECIPE)
    assert sorted(shown) == sorted(["data_recipes/recipes/clinical_qa.yaml", *(str(v) for v in (
        recipe.rank, int(recipe.epochs), recipe.batch_size, recipe.learning_rate, recipe.max_steps, recipe.base_model,
        recipe.fewshot, recipe.max_new_tokens, recipe.dataset_path))])
    for metric in recipe.metrics:  # the multi-select's chips
        assert browser_page.get_by_text(metric, exact=True).count() == 1
    screenshot(browser_page, "prefect-form")
    assert browser_page.get_by_text("Property is type").count() == 0  # no field waits for a type to be picked


def wait_for_runs_of(deployment_id, seconds: float = 120) -> list:
    """The flow runs of the deployment, once there is one: the runs the breach event's automation creates."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + seconds
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        created = [r for r in runs if r.deployment_id == deployment_id]
        if created:
            return created
        assert time.monotonic() < deadline, f"no retrain run within {seconds:g} s of the breach event"
        time.sleep(2)


def test_the_server_s_scheduler_creates_cron_runs_and_a_worker_completes_one(servers, tmp_path):
    """Was: with SQLAlchemy 2.1 the scheduler failed on every loop (`Can't evaluate bulk DML statement`) and no run of
    a cron deployment was ever created."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env, root = servers["env"], servers["root"]
    pool = "ftflow-schedule-test"  # its own pool: the worker must not pick up the other deployments' runs
    file, names = cron_deployments_file(tmp_path, pool)
    ftflow_deploy(env, "--file", str(file))

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        ids = {d.name: d.id for d in client.read_deployments() if d.name in names}
        assert set(ids) == names
        wait_for_scheduled_runs(client, ids, root / "prefect.log")

        # One poll, one run at a time: the worker runs the first due run to its end and exits.
        worker_log = tmp_path / "worker.log"
        worker = start_worker(servers, pool, worker_log, "--run-once", "--limit", "1")
        assert worker.wait(timeout=300) == 0, worker_log.read_text()[-3000:]
        finished = [r for r in runs_of(client, ids["tick"]) if r.state.is_final()]
    assert [(r.auto_scheduled, r.state.type.value) for r in finished] == [(True, "COMPLETED")], \
        worker_log.read_text()[-3000:]


def cron_deployments_file(folder: Path, pool: str) -> tuple[Path, set[str]]:
    """A deployments file of ftflow's cron deployments as shipped, and a cron deployment on POOL of a flow that
    finishes at once, for the worker; and the names of its deployments. The tick's cron has a sixth field, seconds:
    every 5 s, so that a run is due within the worker's one poll."""
    shipped = [d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"] if d.get("schedules")]
    tick = {"name": "tick", "entrypoint": "tests/integration/scheduled_flow.py:tick",
            "schedules": [{"cron": "* * * * * */5"}], "work_pool": {"name": pool}}
    file = folder / "prefect.yaml"
    file.write_text(yaml.safe_dump({"deployments": [*shipped, tick]}))
    return file, {"tick", *(d["name"] for d in shipped)}


def runs_of(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def wait_for_scheduled_runs(client, ids: dict, server_log: Path, seconds: float = 180) -> None:
    """Until the scheduler has created a scheduled run of each deployment in IDS (name: id)."""
    deadline = time.monotonic() + seconds
    while not all(any(r.auto_scheduled and r.state.is_scheduled() for r in runs_of(client, i)) for i in ids.values()):
        assert time.monotonic() < deadline, (
            f"the scheduler created no run of {sorted(n for n, i in ids.items() if not runs_of(client, i))} within "
            f"{seconds:g} s:\n" + server_log.read_text()[-3000:])
        time.sleep(2)
