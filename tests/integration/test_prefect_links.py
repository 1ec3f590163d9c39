"""The trail from Prefect to MLflow, seen in a browser: a run against a real `prefect server start` (which serves
Prefect's UI) tags its MLflow run with the flow run's page, and that page's artifacts link the run in MLflow's UI.
Saves prefect-run-links.png (tests/browser.py: screenshot)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.browser import screenshot
from tests.conftest import DEMO_RECIPE, REPO
from tests.integration.test_servers import BIN, free_port, start, stop, wait_for

pytestmark = pytest.mark.integration


def test_the_prefect_run_page_links_the_mlflow_run(tmp_path, browser_page):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "FTFLOW_"))}
    env |= {"FTFLOW_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port), "FTFLOW_MLFLOW_UI_URL": "http://mlflow.test:5000"}
    server = start([str(BIN / "prefect"), "server", "start"], env, tmp_path / "prefect.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health", server, tmp_path / "prefect.log")
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        ran = subprocess.run([str(BIN / "ftflow"), "run", str(DEMO_RECIPE), "--until", "clean_balance", "--json"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        summary = json.loads(ran.stdout[ran.stdout.index("{"):])
        run_url = summary["mlflow_run_url"]
        assert run_url.startswith("http://mlflow.test:5000/#/experiments/") and list(summary)[-1] == "model_version_url"
        assert ran.stderr.rstrip().endswith(f"MLflow run: {run_url}")

        flow_run_page = f"http://127.0.0.1:{port}/runs/flow-run/{summary['run_id']}"
        browser_page.set_viewport_size({"width": 1400, "height": 1000})
        browser_page.goto(flow_run_page)
        # The run's log line, linked by Prefect's UI.
        browser_page.locator(f'a[href="{run_url}"]').first.wait_for(timeout=60_000)
        screenshot(browser_page, "prefect-run-links.png")
    finally:
        stop([server])

    from ftcore import tracking

    os.environ["FTFLOW_HOME"] = env["FTFLOW_HOME"]  # the run's store, read back
    try:
        tags = tracking.client().get_run(summary["mlflow_run_id"]).data.tags
    finally:
        del os.environ["FTFLOW_HOME"]
    assert tags["ftflow.prefect_flow_run_url"] == flow_run_page
