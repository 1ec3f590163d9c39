"""Live progress of a run (docs/training.md, "Watching a run"): the train stage logs each step's metrics into the
pipeline's MLflow run while it trains and a line every tenth of the run into Prefect's log; a cached re-run logs no
training history again and names the run that produced each stage.

The demo data on a tiny model, trained 40 steps, logged every 2, evaluated every 20; run through the flow up to the
train stage twice in one FTFLOW_HOME (the second time every stage is cached)."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest

from ftcore import tracking
from ftcore.stages import Stage
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES
from tests.e2e.test_train_resume import add_callback

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

SCHEDULE = ["train.max_steps=40", "train.logging_steps=2", "train.eval_steps=20", "train.save_steps=100"]
LIVE = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss")  # history keys (tracking.metric_key)


def seen_at_the_end_of_training(seen: dict[str, list[tuple[int, float]]]):
    """A callback that reads the pipeline's MLflow run at the end of training, before the train stage returns (so
    before the flow logs the stage's output): what the run holds then was logged live."""
    from transformers import TrainerCallback

    class SeenAtTheEnd(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            (run,) = tracking.running_runs("clinical-qa")  # this FTFLOW_HOME's only running run
            client = tracking.client()
            seen.update({name: [(m.step, m.value)
                                for m in client.get_metric_history(run["run_id"], tracking.metric_key(name))]
                         for name in LIVE})

    return SeenAtTheEnd


def run_until_train() -> dict:
    from flows.finetune import finetune

    return finetune(str(DEMO_RECIPE), [*TINY_OVERRIDES, *SCHEDULE], Stage.train)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> dict:
    """The first run (its summary, and what MLflow held at the end of its training) and the cached second run."""
    seen: dict[str, list[tuple[int, float]]] = {}
    home = tmp_path_factory.mktemp("live") / "ftflow"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTFLOW_HOME", str(home))
        add_callback(patch, seen_at_the_end_of_training(seen))
        first = run_until_train()
        again = run_until_train()
    return {"first": first, "seen": seen, "again": again, "home": home}


@pytest.fixture
def client(runs: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTFLOW_HOME", str(runs["home"]))
    return tracking.client()


def history_of(summary: dict) -> list[dict]:
    return json.loads(Path(summary["stages"]["train"]["artifacts"]["history"]).read_text())


def test_the_mlflow_run_has_each_steps_metrics_before_the_train_stage_ends(runs: dict):
    seen, history = runs["seen"], history_of(runs["first"])
    assert [step for step, _ in seen["loss"]] == list(range(2, 41, 2))
    assert [value for _, value in seen["loss"]] == pytest.approx([h["loss"] for h in history if "loss" in h])
    for name in ("learning_rate", "grad_norm", "tokens_per_second"):
        assert [step for step, _ in seen[name]] == list(range(2, 41, 2)), name
    assert [step for step, _ in seen["eval_loss"]] == [20, 40]


def test_after_the_stage_the_run_has_each_step_once(runs: dict, client):
    run_id, history = runs["first"]["mlflow_run_id"], history_of(runs["first"])
    for name in LIVE:
        steps = [m.step for m in client.get_metric_history(run_id, tracking.metric_key(name))]
        assert sorted(steps) == [h["step"] for h in history if name in h], name


def test_prefects_log_has_a_line_about_every_tenth_of_the_training(runs: dict):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()  # sends what is queued and waits: no race with the log worker
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(runs["first"]["run_id"])])))
    lines = [log.message for log in logs if log.message.startswith("step ")]
    # 40 steps logged every 2: a line every 4 steps, at a logging step.
    assert [line.split()[1] for line in lines] == [f"{step}/40" for step in range(4, 41, 4)]
    assert all(" loss " in line and " lr " in line and " tok/s, " in line and line.endswith(" left")
               for line in lines), lines


def test_a_cached_rerun_logs_no_training_history_and_names_the_run_that_trained(runs: dict, client):
    first, again = runs["first"], runs["again"]
    ran = {name: stage["status"] for name, stage in again["stages"].items() if stage["status"] != "skipped"}
    assert ran == {"collect": "cached", "clean_balance": "cached", "init": "cached", "train": "cached"}
    run = client.get_run(again["mlflow_run_id"])
    assert not {tracking.metric_key(name) for name in LIVE} & run.data.metrics.keys()
    assert run.data.metrics[tracking.metric_key("train_loss", "train")] == first["stages"]["train"]["metrics"][
        "train_loss"]
    assert run.data.tags["ftflow.stage.train"] == "cached"
    for stage in ran:
        assert run.data.tags[f"ftflow.stage.{stage}.run"] == first["mlflow_run_id"], stage
    assert not client.list_artifacts(again["mlflow_run_id"], "stages")
    assert run.inputs.dataset_inputs == []


def test_a_cached_stages_artifacts_are_fetched_from_the_run_that_produced_it(runs: dict, client, tmp_path):
    history = tracking.download_run_artifact(runs["again"]["mlflow_run_id"], "stages/train/history.json", tmp_path)
    assert json.loads(history.read_text()) == history_of(runs["first"])
