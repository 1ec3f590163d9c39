"""The whole finetune flow on the demo data with a tiny model, through Prefect's test harness and a temporary
MLflow SQLite store (FTFLOW_HOME is per test, except for the demo's three runs, which the module's tests share)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ftcore import tracking
from ftcore.paths import home
from ftcore.stages import LAST_STAGE, STAGES, Stage
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]


def run(*overrides: str, until: Stage = LAST_STAGE) -> dict:
    from flows.finetune import finetune

    return finetune(str(DEMO_RECIPE), [*TINY_OVERRIDES, *overrides], until)


def statuses(summary: dict) -> dict[str, str]:
    return {name: stage["status"] for name, stage in summary["stages"].items()}


# --- the demo, run three times in one FTFLOW_HOME shared by the tests below ----------------------------------------
# A full run, the same run again (every stage cached), and a run with an evaluate.* setting changed, each done once
# for the module (they are the slow part), in the order a user would: a test that needs a later run gets the earlier
# ones first.


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetune-demo") / "ftflow"


@contextmanager
def at_home(folder: Path) -> Iterator[None]:
    """FTFLOW_HOME set to `folder` in the block (over the per-test one of conftest's autouse `ftflow_home`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTFLOW_HOME", str(folder))
        yield


@pytest.fixture(scope="module")
def first(demo_home: Path, prefect_harness) -> dict:
    with at_home(demo_home):
        return run()


@pytest.fixture(scope="module")
def again(demo_home: Path, first: dict) -> dict:
    with at_home(demo_home):
        return run()


@pytest.fixture(scope="module")
def changed(demo_home: Path, again: dict) -> dict:
    with at_home(demo_home):
        return run("evaluate.max_new_tokens=20")


@pytest.fixture
def client(demo_home: Path, monkeypatch: pytest.MonkeyPatch):
    """The MLflow client of the demo's runs: the test's FTFLOW_HOME is theirs."""
    monkeypatch.setenv("FTFLOW_HOME", str(demo_home))
    return tracking.client()


def test_a_full_run_completes_every_stage(first: dict):
    assert statuses(first) == {s.value: "completed" for s in STAGES}


def test_the_trained_model_beats_the_base_model(first: dict):
    ev = first["stages"]["evaluate"]["metrics"]
    assert ev["exact_match"] > ev["base.exact_match"]
    assert ev["perplexity"] < ev["base.perplexity"] / 10
    train = first["stages"]["train"]["metrics"]
    assert train["train_loss"] < train["train_loss_first"]


def test_the_first_run_passes_the_gate_and_registers_version_1_as_champion(first: dict, client):
    assert first["gate"]["passed"] is True
    assert first["model"] == {"name": "clinical-qa", "version": "1", "aliases": ["challenger", "champion"],
                              "uri": "models:/clinical-qa/1"}
    version = client.get_model_version("clinical-qa", "1")
    assert sorted(version.aliases) == ["challenger", "champion"]
    assert version.tags["recipe_hash"] == first["recipe_hash"]
    assert version.tags["dataset_hash"] == first["dataset_hash"]
    assert {"git_commit", "ftflow_version"} <= version.tags.keys()


def test_the_run_summary_is_written_beside_the_run(first: dict, demo_home: Path):
    on_disk = json.loads((demo_home / "runs" / first["run_id"] / "summary.json").read_text())
    assert on_disk == first
    assert {"run_id", "mlflow_run_id", "recipe_hash", "dataset_hash", "stages", "model", "gate"} <= on_disk.keys()


def test_the_mlflow_run_holds_params_metrics_and_the_loss_history(first: dict, client):
    ev = first["stages"]["evaluate"]["metrics"]
    mlflow_run = client.get_run(first["mlflow_run_id"])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["train.epochs"] == "12.0"
    assert mlflow_run.data.metrics[tracking.metric_key("exact_match", "evaluate")] == ev["exact_match"]
    assert len(client.get_metric_history(first["mlflow_run_id"], tracking.metric_key("loss"))) >= 3


def test_the_mlflow_run_names_each_split_as_a_dataset_input(first: dict, client):
    inputs = client.get_run(first["mlflow_run_id"]).inputs.dataset_inputs
    assert {d.dataset.name for d in inputs} == {"clean_balance-train", "clean_balance-validation", "clean_balance-test"}
    assert len({d.dataset.digest for d in inputs}) == 3  # each split identified by its own content hash
    assert {t.value for d in inputs for t in d.tags if t.key == "ftflow.dataset_hash"} == {first["dataset_hash"]}


def test_the_mlflow_run_holds_the_recipe_the_stage_outputs_and_the_model(first: dict, client):
    clean_artifacts = {a.path for a in client.list_artifacts(first["mlflow_run_id"], "stages/clean_balance")}
    assert "stages/clean_balance/data_card.md" in clean_artifacts
    artifacts = {a.path for a in client.list_artifacts(first["mlflow_run_id"])}
    assert {"recipe.yaml", "stages", "model"} <= artifacts


def test_an_unchanged_rerun_is_fully_cached_and_logged_as_a_new_mlflow_run(first: dict, again: dict, client):
    ev = first["stages"]["evaluate"]["metrics"]
    assert statuses(again) == {s.value: "cached" for s in STAGES}
    assert again["model"]["version"] == "1" and again["mlflow_run_id"] != first["mlflow_run_id"]
    cached_run = client.get_run(again["mlflow_run_id"])
    assert cached_run.data.metrics[tracking.metric_key("exact_match", "evaluate")] == ev["exact_match"]
    assert cached_run.data.tags["ftflow.stage.train"] == "cached"


def test_changing_evaluate_reruns_evaluate_deploy_and_monitor_only(changed: dict):
    assert statuses(changed) == {"collect": "cached", "clean_balance": "cached", "init": "cached",
                                 "train": "cached", "evaluate": "completed", "deploy": "completed",
                                 "monitor": "completed"}


def test_re_evaluating_the_champion_registers_and_promotes_nothing(changed: dict, client):
    # The same trained model, evaluated anew: it is version 1 and the champion already, so nothing is registered
    # or promoted.
    assert changed["model"]["version"] == "1" and changed["model"]["aliases"] == ["challenger", "champion"]
    assert not changed["gate"]["passed"] and "the candidate is champion v1 itself" in changed["gate"]["reason"]
    assert len(client.search_model_versions("name = 'clinical-qa'")) == 1


# --- other runs, each in the test's own FTFLOW_HOME -----------------------------------------------------------------


def test_a_transient_failure_is_retried_and_the_run_completes(monkeypatch):
    import tasks.train

    calls = []
    real_train = tasks.train.train_stage

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("injected transient failure")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tasks.train, "train_stage", flaky)
    summary = run("stages.retries=2", "train.max_steps=3", until=Stage.train)
    assert len(calls) == 2
    assert statuses(summary)["train"] == "completed"
    assert summary["stages"]["train"]["metrics"]["steps"] == 3


def test_a_stage_that_keeps_failing_fails_the_run_naming_stage_and_reason(monkeypatch):
    import tasks.evaluate
    from flows.finetune import StageFailed

    def broken(*args, **kwargs):
        raise RuntimeError("metric server exploded")

    monkeypatch.setattr(tasks.evaluate, "evaluate_stage", broken)
    with pytest.raises(StageFailed) as failed:
        run("stages.retries=1", "train.max_steps=2")
    summary = failed.value.summary
    assert summary["failure"] == "stage evaluate failed: RuntimeError: metric server exploded"
    assert statuses(summary)["evaluate"] == "failed"
    assert statuses(summary)["deploy"] == statuses(summary)["monitor"] == "skipped"
    assert json.loads((home() / "runs" / summary["run_id"] / "summary.json").read_text())["failure"]
    assert tracking.client().get_run(summary["mlflow_run_id"]).info.status == "FAILED"


def test_until_stops_after_the_named_stage():
    summary = run(until=Stage.clean_balance)
    assert statuses(summary) == {"collect": "completed", "clean_balance": "completed", "init": "skipped",
                                 "train": "skipped", "evaluate": "skipped", "deploy": "skipped",
                                 "monitor": "skipped"}
    assert summary["model"] is None and summary["dataset_hash"]


def test_a_cached_stage_whose_output_was_deleted_is_recomputed():
    import shutil

    first = run(until=Stage.collect)
    assert statuses(first)["collect"] == "completed"
    shutil.rmtree(home() / "artifacts" / "collect")
    again = run(until=Stage.collect)
    assert statuses(again)["collect"] == "completed"
    assert (home() / "artifacts" / "collect").is_dir()
