"""The MLflow run page while the train stage runs: its loss chart holds the steps trained so far (docs/training.md,
"Watching a run"). The page is opened and photographed from inside training, at step 20 of 40, so training waits for
the browser: `mlflow-run-training.png` shows a half-drawn curve."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftcore import tracking
from ftcore.training.distributed import free_port
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.browser import screenshot
from tests.ftcore.pipeline_fixtures import prepare

pytestmark = pytest.mark.e2e

MID_STEP, STEPS = 20, 40
RUN_NAME = "training-live"


@pytest.fixture
def mlflow_ui(ftflow_home: Path, tmp_path: Path) -> Iterator[str]:
    """`mlflow ui` on this test's store (as `ftflow ui` starts it), on a free loopback port; its URL once it answers."""
    tracking.client()  # creates the store's tables before the server opens it
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking.tracking_uri(),
               "--default-artifact-root", tracking.artifact_root(), "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "mlflow-ui.log").open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while not _answers(f"{url}/health"):
                assert server.poll() is None, (tmp_path / "mlflow-ui.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow ui did not answer in 180 s"
                time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def photograph_at(step: int, page, run_id: str, seen: dict):
    """A callback that, at `step`'s log entry (after LiveMetrics logged it), opens the run's metrics page, waits
    for the loss chart and saves the screenshot; `seen` gets the loss steps MLflow held then and the picture."""
    from transformers import TrainerCallback

    class Photograph(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            if state.global_step != step or "loss" not in state.log_history[-1]:
                return
            client = tracking.client()
            seen["steps"] = [m.step for m in client.get_metric_history(run_id, tracking.metric_key("loss"))]
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.goto(tracking.run_url(run_id).replace("?", "/model-metrics?", 1))  # the link ftflow prints, its charts
            legend = f"{RUN_NAME} ({tracking.metric_key('loss')})"
            page.get_by_text(legend).first.wait_for(timeout=120_000)  # the loss chart's legend
            seen["status"] = client.get_run(run_id).info.status
            seen["picture"] = screenshot(page, "mlflow-run-training.png")

    return Photograph


def test_the_mlflow_run_page_shows_the_loss_curve_growing_during_training(tmp_path, mlflow_ui, browser_page,
                                                                         monkeypatch):
    monkeypatch.setenv(tracking.UI_URL_VARIABLE, mlflow_ui)
    prepared = prepare(tmp_path / "stages")
    run_id = tracking.start_pipeline_run("clinical-qa", RUN_NAME, {"train": {"max_steps": STEPS}}, {})
    cfg = prepared.recipe.train.model_copy(update={"max_steps": STEPS, "logging_steps": 2, "save_steps": 100})
    seen: dict = {}

    train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=cfg), tmp_path / "train",
                callbacks=[photograph_at(MID_STEP, browser_page, run_id, seen)()], mlflow_run_id=run_id)

    assert seen["steps"] == list(range(2, MID_STEP + 1, 2))  # the curve so far, while training went on
    assert seen["status"] == "RUNNING"
    assert seen["picture"].stat().st_size > 20_000
    after = [m.step for m in tracking.client().get_metric_history(run_id, tracking.metric_key("loss"))]
    assert after == list(range(2, STEPS + 1, 2))
