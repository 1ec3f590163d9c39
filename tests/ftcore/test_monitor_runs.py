"""The monitor end to end: the pipeline's stage serving a trained version, and the scheduled flow on planted slow
and toxic traffic under Prefect's test harness (FTFLOW_HOME per test)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.testing.fixtures import asserting_events_worker  # noqa: F401  registers the fixture the flow test uses

from ftcore import tracking, versions
from ftcore.errors import UserError
from ftcore.monitor.canaries import question_template
from ftcore.monitor.stage import REQUEST_LOG, MonitorJob, monitor_stage
from ftcore.outputs import DeployOutput
from ftcore.safety.config import ToxicityScreenConfig
from ftcore.serving.request_log import RequestLog, RequestRecord
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.conftest import DEMO_RECIPE
from tests.ftcore.monitor_fixtures import (
    CANARIES,
    DEMO,
    TEMPLATE,
    canaries_file,
    demo_prompts,
    fake_endpoint,
    planted_window,
)
from tests.ftcore.pipeline_fixtures import prepare

LEXICON = ToxicityScreenConfig()


# --- the pipeline's stage: the new version served, probed and canaried ------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("monitor-stage")
    prepared = prepare(root, "train.max_steps=2")
    return prepared, train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train),
                                 root / "train")


def test_the_stage_serves_the_version_and_assesses_exactly_its_own_traffic(tmp_path, trained):
    prepared, model = trained
    run_id = tracking.start_pipeline_run("watch-me", "run", {"name": "watch-me"}, {})
    version = versions.register_version(run_id, "watch-me", model.model_path, {})
    cfg = prepared.recipe.monitor.model_copy(update={"probe_size": 4, "max_new_tokens": 8})
    deployed = DeployOutput(path=tmp_path / "deploy", content_hash="d", registered_model="watch-me", version=version,
                            aliases=[], uri=f"models:/watch-me/{version}", gate_passed=True, gate_reason="")
    job = MonitorJob(deployed=deployed, dataset=prepared.dataset, monitor=cfg, toxicity=LEXICON,
                     prompt_template=question_template(prepared.recipe.data))
    out = monitor_stage(job, tmp_path / "monitor")
    m = out.metrics
    assert m["requests"] == 4 + 38 and m["canaries"] == 38 and m["error_rate"] == 0
    assert 0 < m["latency_p50_s"] <= m["latency_p95_s"] <= m["latency_p99_s"]
    assert 0 <= m["canary_accuracy"] <= 1 and m["outputs_screened"] == 42 and m["inputs_compared"] == 42
    assert 0 <= m["drift_score"] <= 1 and {"drift.length", "drift.vocabulary", "drift.embedding"} <= m.keys()
    logged = RequestLog(f"sqlite:///{out.path / REQUEST_LOG}").read()
    assert set(logged["model"]) == {"watch-me"} and set(logged["version"]) == {version}
    assert logged["input"].iloc[0] == pd.read_parquet(prepared.dataset.splits["test"])["prompt"].iloc[0]
    canaries = [json.loads(line) for line in out.artifacts["canaries"].read_text().splitlines()]
    assert canaries[0]["question"] == "What does MI stand for?" and m["canary_accuracy"] == pytest.approx(
        sum(c["correct"] for c in canaries) / 38)
    assert out.artifacts["report"].read_text().startswith("<!DOCTYPE html>")
    [run] = tracking.client().search_runs([tracking.client().get_experiment_by_name("watch-me-monitor").experiment_id])
    assert run.data.tags["ftflow.monitor.source"] == "pipeline" and run.data.tags["version"] == version
    assert run.data.metrics["latency_p95_s"] == m["latency_p95_s"]
    assert run.data.tags["breaches"] == ",".join(out.breaches)


# --- the scheduled flow: planted slow and toxic traffic breaches, reports and retrains --------------------------


def register_version_with_training_data(name: str, tmp: Path) -> str:
    """A registered version as the pipeline leaves one: its run holds the clean_balance dataset (the training inputs
    drift is measured against); the model files themselves are never loaded by the monitor flow."""
    run_id = tracking.start_pipeline_run(name, "run", {"name": name}, {})
    dataset = tmp / "clean" / "dataset.parquet"
    dataset.parent.mkdir()
    prompts = demo_prompts()
    pd.DataFrame({"prompt": prompts, "completion": " x", "split": ["test"] * 10 + ["train"] * (len(prompts) - 10)}
                 ).to_parquet(dataset)
    tracking.log_stage(run_id, "clean_balance", {}, {"dataset": dataset}, cached=False)
    model_dir = tmp / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    version = versions.register_version(run_id, name, model_dir, {})
    versions.set_alias(name, versions.CHAMPION, version)
    return version


def plant_requests(url: str) -> None:
    """The planted window (30 requests, 6 slow, 4 toxic) plus traffic the window must leave out: another model's
    failures, and this model's failures from before the window."""
    log = RequestLog(url)
    planted = planted_window().assign(model="clinical-qa")
    records = [RequestRecord(**{c: (None if pd.isna(v) else v) for c, v in row.items()})
               for row in planted.to_dict("records")]
    records += [RequestRecord(ts=time.time() - 60, model="other", version="1", endpoint="completions", status=500,
                              latency_s=9.0),
                RequestRecord(ts=time.time() - 3 * 3600, model="clinical-qa", version="1", endpoint="completions",
                              status=500, latency_s=9.0)]
    log.append(records)
    log.close()


def monitor_recipe(tmp: Path, request_log: str, endpoint: str, canaries: Path) -> Path:
    """The demo recipe with a monitor section pointing at the planted log, the fake endpoint and a retraining
    deployment."""
    raw = yaml.safe_load(DEMO_RECIPE.read_text())
    raw["data"]["sources"][0]["path"] = str(DEMO / "clinical_qa.jsonl")
    raw["evaluate"]["safety"]["bias"]["prompts"] = str(DEMO / "clinical_bias_prompts.txt")
    raw["monitor"] = {"request_log": request_log, "endpoint": endpoint, "canaries": str(canaries), "window": "1h",
                      "retrain": {"deployment": "retrain/retrain",
                                  "parameters": {"recipe_path": "clinical_qa.yaml", "overrides": ["train.epochs=20"]}}}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@contextmanager
def monitored(tmp: Path) -> Iterator[Path]:
    """The recipe of a monitor pass over the planted traffic (plant_requests), with the fake endpoint up and
    answering every canary right while the block runs."""
    request_log = f"sqlite:///{tmp / 'requests.db'}"
    plant_requests(request_log)
    canaries = canaries_file(tmp / "canaries.jsonl", CANARIES)
    replies = {TEMPLATE.replace("{prompt}", q): f" {a}" for q, a in CANARIES}
    with fake_endpoint(replies) as url:
        yield monitor_recipe(tmp, request_log, url, canaries)


def deploy_stand_in_retraining():
    """A `retrain/retrain` deployment of a flow that stands in for the retraining flow (the test only checks that a
    run of it was created): its id."""
    from prefect import flow

    @flow(name="retrain")
    def retrain(recipe_path: str, overrides: list[str] | None = None) -> None:
        pass

    return retrain.to_deployment(name="retrain").apply()


@pytest.mark.usefixtures("prefect_harness")
def test_slow_and_toxic_traffic_breaches_both_objectives_reports_and_starts_retraining(tmp_path, request):
    from prefect.client.orchestration import get_client

    from flows.monitor import monitor

    events = request.getfixturevalue("asserting_events_worker")  # Prefect's: keeps every event emitted
    deployment_id = deploy_stand_in_retraining()
    version = register_version_with_training_data("clinical-qa", tmp_path)
    with monitored(tmp_path) as recipe:
        result = monitor(model="models:/clinical-qa@champion", recipe=str(recipe))

    assert result["version"] == version and result["breaches"] == ["latency_p95_s", "toxic_rate"]
    m = result["metrics"]
    assert m["requests"] == 30 and m["error_rate"] == 0 and m["canary_accuracy"] == 1.0
    assert m["latency_p95_s"] == pytest.approx(3.5) and m["toxic_rate"] == pytest.approx(4 / 30)
    assert result["not_measured"] == [] and m["drift_score"] < 0.5

    report = Path(result["report"]).read_text()
    assert "BREACHED: latency_p95_s, toxic_rate" in report
    run = tracking.client().get_run(result["mlflow_run_id"])
    assert run.data.tags["breaches"] == "latency_p95_s,toxic_rate"
    assert run.data.tags["ftflow.monitor.source"] == "schedule"
    assert {a.path for a in tracking.client().list_artifacts(run.info.run_id)} >= {"report.html", "metrics.json"}

    with get_client(sync_client=True) as client:
        retrain_run = client.read_flow_run(result["retrain_flow_run_id"])
        artifact = client.read_latest_artifacts()
    assert retrain_run.deployment_id == deployment_id
    assert retrain_run.parameters == {"recipe_path": "clinical_qa.yaml", "overrides": ["train.epochs=20"]}
    assert any(a.key == "monitor-clinical-qa" and "latency_p95_s" in a.data for a in artifact)

    events.wait_until_empty()
    [breach] = [e for e in events._client.events if e.event == "ftflow.monitor.breach"]
    assert breach.resource.id == "ftflow.model.clinical-qa" and breach.resource["ftflow.model.version"] == version
    assert breach.payload["breaches"] == ["latency_p95_s", "toxic_rate"]
    assert breach.payload["metrics"]["toxic_rate"] == pytest.approx(4 / 30)


@pytest.mark.usefixtures("prefect_harness")
def test_a_breach_of_a_version_that_is_not_the_champion_starts_no_retraining(tmp_path):
    """Only production's breaches retrain: a scheduled pass over another version (an experiment that failed the
    gate) reports its breach but leaves `monitor.retrain` alone."""
    from flows.monitor import monitor

    for folder in ("v1", "v2"):
        (tmp_path / folder).mkdir()
    champion = register_version_with_training_data("clinical-qa", tmp_path / "v1")
    experiment = register_version_with_training_data("clinical-qa", tmp_path / "v2")
    versions.set_alias("clinical-qa", versions.CHAMPION, champion)  # v2 failed the gate
    with monitored(tmp_path) as recipe:
        result = monitor(model=f"models:/clinical-qa/{experiment}", recipe=str(recipe))
    assert result["version"] == experiment and result["breaches"] == ["latency_p95_s", "toxic_rate"]
    assert result["retrain_flow_run_id"] is None


@pytest.mark.usefixtures("prefect_harness")
def test_a_retraining_deployment_that_does_not_exist_is_a_one_line_error():
    from prefect import flow

    from ftcore.monitor.config import RetrainConfig
    from tasks.monitor import start_retraining

    @flow(name="starts-retraining")
    def starts() -> str:
        return start_retraining(RetrainConfig(deployment="retrain/nowhere"))

    with pytest.raises(UserError, match=r"monitor.retrain.deployment: no deployment 'retrain/nowhere'"):
        starts()


@pytest.mark.usefixtures("prefect_harness")
def test_ftflow_monitor_prints_the_breaches_and_exits_1(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    register_version_with_training_data("clinical-qa", tmp_path)
    with monitored(tmp_path) as recipe:
        raw = yaml.safe_load(recipe.read_text())
        del raw["monitor"]["retrain"]  # a breach then starts nothing
        recipe.write_text(yaml.safe_dump(raw))
        result = CliRunner().invoke(app, ["monitor", "models:/clinical-qa@champion", "--recipe", str(recipe),
                                          "--json"])
    assert result.exit_code == 1, result.output
    printed = json.loads(result.stdout[result.stdout.index("{"):])
    assert printed["breaches"] == ["latency_p95_s", "toxic_rate"] and printed["retrain_flow_run_id"] is None
    assert Path(printed["report"]).is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["clinical-qa"], "MODEL_URI: 'clinical-qa' is not models:/NAME@ALIAS"),
    (["models:/clinical-qa@champion", "--window", "5x"], "--window: '5x' is not a duration"),
])
def test_ftflow_monitor_refuses_bad_arguments_in_one_line(args, message):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["monitor", *args, "--recipe", str(DEMO_RECIPE)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
