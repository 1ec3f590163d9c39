"""The trail between the two dashboards: the summary's links into MLflow's UI, the outcomes (a failed gate, a breach)
marked in the table and named in the flow run's final state, and MLflow's experiment kind and run names."""

from __future__ import annotations

import pytest
from prefect.states import State
from rich.console import Console

from flows.finetune import end_state, run_title
from flows.summary import outcomes, render_table, run_description
from ftcore import tracking
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE


def summary_of(aliases: list[str], passed: bool, breaches: list[str]) -> dict:
    rules = [{"rule": "beat_champion", "passed": passed, "value": 0.1, "threshold": 0.0, "reason": "..."}]
    deploy = {"status": "completed", "duration_s": 1.0, "metrics": {"version": 3.0}}
    monitor = {"status": "completed", "duration_s": 1.0, "metrics": {"canary_accuracy": 0.0, "error_rate": 0.0}}
    return {"run_id": "r1", "stages": {"deploy": deploy, "monitor": monitor},
            "model": {"name": "clinical-qa", "version": "3", "aliases": aliases}, "breaches": breaches,
            "gate": {"passed": passed, "reason": "...", "rules": rules}}


def rendered(summary: dict) -> str:
    console = Console(width=200, record=True)
    console.print(render_table(summary))
    return console.export_text()


def test_a_failed_gate_and_a_breach_are_marked_in_the_table_and_name_the_final_state():
    summary = summary_of(["challenger"], passed=False, breaches=["canary_accuracy"])
    text = rendered(summary)
    assert "canary_accuracy=0 breached" in text and "error_rate=0 breached" not in text
    assert "beat_champion failed" in text
    assert "gate failed: v3 stays challenger" in text and "monitor breach: canary_accuracy" in text  # the footer

    state = end_state(summary)
    assert isinstance(state, State) and state.is_completed()  # a normal outcome, not an error
    assert state.name == "Gate failed"
    assert state.message == "gate failed: v3 stays challenger; monitor breach: canary_accuracy"
    assert state.data is summary


@pytest.mark.parametrize(("aliases", "passed", "breaches", "name"), [
    (["challenger", "champion"], True, [], "Completed"),
    (["challenger", "champion"], False, [], "Unchanged"),  # the candidate is the champion itself
    (["challenger", "champion"], True, ["latency_p95_s"], "Monitor breach"),
])
def test_the_final_state_is_named_for_the_first_outcome(aliases, passed, breaches, name):
    summary = summary_of(aliases, passed, breaches)
    assert end_state(summary).name == name
    assert [o.state for o in outcomes(summary)] == ([] if name == "Completed" else [name])


def test_the_mlflow_links_open_the_ui_on_runs(ftflow_home, monkeypatch):
    for variable in (tracking.UI_URL_VARIABLE, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    run_id = tracking.start_pipeline_run("trail", "run", {"name": "trail"}, {})
    experiment = tracking.client().get_experiment_by_name("trail")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "finetuning"
    assert tracking.run_url(run_id) == (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/"
                                        f"{run_id}?workflowType=machine_learning")
    assert tracking.run_url(run_id, "stages/evaluate/report.html").endswith(
        f"/runs/{run_id}/artifacts/stages/evaluate/report.html?workflowType=machine_learning")
    monkeypatch.setenv(tracking.UI_URL_VARIABLE, "https://mlflow.example.org/")
    assert tracking.version_url("clinical qa", "3") == ("https://mlflow.example.org/#/models/clinical%20qa/versions/3"
                                                        "?workflowType=machine_learning")


def test_an_experiment_made_before_the_kind_was_set_gets_it(ftflow_home):
    tracking.client().create_experiment("older", artifact_location=tracking.artifact_root())
    tracking.start_pipeline_run("older", "run", {"name": "older"}, {})
    assert tracking.client().get_experiment_by_name("older").tags[tracking.EXPERIMENT_KIND_TAG] == "finetuning"


def test_the_run_name_says_what_ran():
    recipe = load_recipe(DEMO_RECIPE, ["method.name=lora", "method.r=8", "train.learning_rate=0.005",
                                       "train.epochs=15", "train.max_steps=null"])
    assert run_title(recipe) == f"{recipe.objective} · lora r8 · lr 0.005 · 15 ep"
    assert run_title(load_recipe(DEMO_RECIPE, ["train.max_steps=40"])).endswith(" · 40 steps")


def test_the_mlflow_run_s_description_says_what_the_run_came_to(ftflow_home):
    summary = summary_of(["challenger"], passed=False, breaches=["canary_accuracy"])
    summary |= {"model_version_url": tracking.version_url("clinical-qa", "3"), "overrides": ["train.epochs=3"]}
    run_id = tracking.start_pipeline_run("trail", "run", {"name": "trail"}, {})
    tracking.describe_run(run_id, run_description(summary))

    shown = tracking.client().get_run(run_id).data.tags["mlflow.note.content"]  # the run page's Description
    assert shown.startswith(f"[clinical-qa v3]({summary['model_version_url']}) (challenger). **Gate failed**: ...")
    assert "**gate failed: v3 stays challenger**" in shown and "**monitor breach: canary_accuracy**" in shown
    assert "Recipe overrides: `train.epochs=3`" in shown
