"""`ftflow tune`'s flow in one process, through Prefect's test harness: a search of three trials on the demo data
with a tiny model, where one configuration diverges (recorded as failed, the search goes on) and the pruner stops
one that falls behind; the best through the whole pipeline and the gate."""

from __future__ import annotations

import json

import pytest

from ftcore import tracking
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

# lr 1e3 diverges (a non-finite loss: the trial fails); lr 3e-4 learns far slower than 1e-2 (the pruner stops it
# at its first evaluation once a trial has finished). The warm-up is drawn too, so no two trials are the same
# configuration. The random sampler's seed (the recipe's train.seed) fixes the order: 1e-2, 1e3, 3e-4 with seed 150.
SPACE = {"train.learning_rate": {"choice": [1.0e-2, 3.0e-4, 1.0e3]}, "train.warmup_ratio": {"uniform": [0.0, 0.1]}}
TUNE = {"space": SPACE, "objectives": [{"metric": "exact_match", "direction": "maximize"}], "n_trials": 3,
        "sampler": "random", "pruner": "median", "startup_trials": 1, "refit": True}
# 15% validation rows against the test split's 10%: the row counts tell which split a model was scored on.
SEARCH = [*TINY_OVERRIDES, "train.epochs=6", "train.eval_steps=20", "train.seed=150", "data.split.validation=0.15",
          f"tune={json.dumps(TUNE)}"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> tuple[dict, str]:
    from flows.tune import tune

    home = tmp_path_factory.mktemp("tune") / "ftflow"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTFLOW_HOME", str(home))
        return tune(str(DEMO_RECIPE), SEARCH), str(home)


@pytest.fixture
def client(searched, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTFLOW_HOME", searched[1])
    return tracking.client()


def by_state(result: dict) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in result["trials"]:
        rows.setdefault(row["state"], []).append(row)
    return rows


def test_three_trials_ran_one_failed_one_was_pruned_and_the_search_went_on(searched):
    result, _ = searched
    states = by_state(result)
    assert [row["state"] for row in result["trials"]] == ["complete", "failed", "pruned"]
    failed, pruned = states["failed"][0], states["pruned"][0]
    assert failed["params"]["train.learning_rate"] == 1.0e3 and "training diverged" in failed["failure"]
    assert pruned["params"]["train.learning_rate"] == 3.0e-4 and pruned["pruned_at_step"] == 20
    assert pruned["values"] is None and pruned["failure"] is None  # pruned is not failed


def test_each_trial_is_a_child_run_of_the_study_with_its_state(searched, client):
    result, _ = searched
    study_run = tracking.tagged_run("clinical-qa", {"ftflow.study": result["study"], "ftflow.role": "study"})
    for row in result["trials"]:
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == study_run
        assert run.data.tags["ftflow.trial_state"] == row["state"]
        assert run.data.params["train.learning_rate"] == str(row["params"]["train.learning_rate"])
    pruned = client.get_run(by_state(result)["pruned"][0]["mlflow_run_id"])
    assert pruned.data.metrics["train/pruned_at_step"] == 20  # stopped at its first evaluation
    plots = {a.path for a in client.list_artifacts(study_run, "study")}
    assert {"study/optimization_history.png", "study/intermediate_values.png"} <= plots
    assert client.get_run(study_run).data.metrics["study/trials_pruned"] == 1


def test_trials_are_scored_on_the_validation_split_and_the_best_refit_on_train_and_validation(searched, client):
    result, _ = searched
    best = result["best"]
    assert best["number"] == 0 and best["state"] == "complete"
    trial = client.get_run(best["mlflow_run_id"]).data.metrics
    assert trial["evaluate/exact_match"] == best["values"][0]
    assert trial["clean_balance/rows_validation"] != trial["clean_balance/rows_test"]  # the counts tell them apart
    assert trial["evaluate/test_rows"] == trial["clean_balance/rows_validation"]
    # tune.refit: the best configuration trained again with the validation rows in its train split; scored on the
    # same test rows the search never saw.
    final = result["final"]["stages"]
    assert final["train"]["status"] == "completed"
    rows = final["clean_balance"]["metrics"]
    assert rows["rows_train"] == trial["clean_balance/rows_train"] + trial["clean_balance/rows_validation"]
    assert rows["rows_test"] == trial["clean_balance/rows_test"] == final["evaluate"]["metrics"]["test_rows"]


def test_the_best_is_registered_through_the_gate_with_the_study_and_trial_as_tags(searched, client):
    result, _ = searched
    model = result["final"]["model"]
    version = client.get_model_version(model["name"], model["version"])
    assert version.tags["ftflow.study"] == result["study"] and version.tags["ftflow.trial"] == "0"
    assert "mlflow.parentRunId" not in version.tags
    assert result["final"]["gate"] is not None  # decided by the recipe's own gate


def test_each_trial_is_a_prefect_subflow_named_after_it(searched):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    result, _ = searched
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=result["study"])))
    names = {run.name: run for run in runs}
    for row in result["trials"]:
        run = names[f"{result['study']} · trial {row['number']}"]
        assert run.parent_task_run_id is not None  # a subflow of the search's flow run
    assert names[f"{result['study']} · trial 2"].state.name == "Pruned"
    assert f"{result['study']} · best (trial 0)" in names
