"""The deployments of infra/prefect.yaml registered with Prefect (its test harness), and the typed run options the
dashboard's form offers."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.finetune import run_options
from flows.options import RunOptions
from ftcore.errors import UserError
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE


def test_run_options_become_recipe_overrides(tmp_path):
    data = tmp_path / "other.jsonl"
    data.write_bytes((DEMO_RECIPE.parent.parent / "demo" / "clinical_qa.jsonl").read_bytes())
    options = RunOptions(method="dora", learning_rate=3e-4, max_steps=7, dataset_path=str(data))
    assert options.model_fields_set == set(RunOptions.model_fields)  # every option the form offers, each applied:
    recipe = load_recipe(DEMO_RECIPE, options.overrides())
    assert (recipe.method.name, recipe.train.learning_rate, recipe.train.max_steps) == ("dora", 3e-4, 7)
    assert recipe.data.sources[0].path == data.resolve()
    # As a deployment run hands them over: JSON, so a dict.
    assert run_options({"max_steps": 2}) == ["train.max_steps=2"] and run_options(None) == []
    with pytest.raises(UserError, match=r"^options: method: Input should be 'full', .*"):
        run_options({"method": "lora2"})
    with pytest.raises(UserError, match=r"options: learning_rat: unknown field"):
        run_options({"learning_rat": 1e-4})


@pytest.mark.usefixtures("prefect_harness")
def test_ftflow_deploy_registers_the_three_deployments_with_their_schedules_and_form(tmp_path):
    from prefect.client.orchestration import get_client

    result = CliRunner().invoke(app, ["deploy", "--retrain-cron", "0 3 * * *"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        flows = {f.id: f.name for f in client.read_flows()}
        pool = client.read_work_pool("ftflow-process")
    assert {"finetune", "retrain", "monitor"} <= set(deployments)
    assert {name: flows[deployments[name].flow_id] for name in ("finetune", "retrain", "monitor")} == {
        "finetune": "finetune", "retrain": "retrain", "monitor": "monitor"}
    assert pool.type == "process"
    retrain, monitor, finetune = deployments["retrain"], deployments["monitor"], deployments["finetune"]
    assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * *"]
    assert [s.schedule.cron for s in monitor.schedules] == ["*/15 * * * *"] and not finetune.schedules
    assert retrain.global_concurrency_limit.limit == 1 and finetune.work_pool_name == "ftflow-process"
    assert finetune.parameters == {"recipe_path": "data_recipes/recipes/clinical_qa.yaml"}
    # The form: typed fields, the options' drop-down of methods among them.
    schema = finetune.parameter_openapi_schema
    assert {"recipe_path", "overrides", "until", "options"} <= set(schema["properties"])
    options = schema["definitions"]["RunOptions"]["properties"]
    assert set(options) == set(RunOptions.model_fields)  # every run option, each a recipe override (test above)
    assert "dora" in options["method"]["anyOf"][0]["enum"]

    # Registered again, they are updated in place.
    again = CliRunner().invoke(app, ["deploy", "--monitor-cron", "0 * * * *"])
    assert again.exit_code == 0, again.output
    with get_client(sync_client=True) as client:
        monitor_again = client.read_deployment(monitor.id)
    assert [s.schedule.cron for s in monitor_again.schedules] == ["0 * * * *"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_dashboard_run_carries_the_form_s_parameters():
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    assert CliRunner().invoke(app, ["deploy"]).exit_code == 0
    run = run_deployment("finetune/finetune", parameters={"options": {"max_steps": 3}}, timeout=0)
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run.id)
    assert stored.parameters == {"recipe_path": "data_recipes/recipes/clinical_qa.yaml", "options": {"max_steps": 3}}
    assert stored.state.is_scheduled()  # a worker on ftflow-process picks it up


def test_a_bad_deployments_file_is_one_line(tmp_path):
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: nowhere\n")
    result = CliRunner().invoke(app, ["deploy", "--file", str(bad)])
    assert result.exit_code == 2
    assert "prefect.yaml: deployments.0.entrypoint: String should match pattern" in result.output
    bad.write_text("deployments: []\ndeployments: []\n")
    result = CliRunner().invoke(app, ["deploy", "--file", str(bad)])
    assert result.exit_code == 2
    assert "prefect.yaml: line 2, column 1: duplicate key 'deployments'" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_bad_schedule_is_one_line_before_anything_is_registered(tmp_path):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        before = client.read_deployments()
    result = CliRunner().invoke(app, ["deploy", "--retrain-cron", "every sunday"])
    assert result.exit_code == 2
    assert result.output.strip() == 'error: --retrain-cron: Invalid cron string: "every sunday"'
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: flows/retrain.py:retrain\n"
                   "    schedules: [{cron: '0 2 * * 0', timezone: Mars/Base}]\n")
    result = CliRunner().invoke(app, ["deploy", "--file", str(bad)])
    assert result.exit_code == 2
    assert "prefect.yaml: deployments.0.schedules.0" in result.output and "Invalid timezone" in result.output
    with get_client(sync_client=True) as client:
        # Was: a traceback once the server had registered the deployments before the bad one.
        assert client.read_deployments() == before


@pytest.mark.usefixtures("prefect_harness")
def test_a_breach_of_the_recipe_s_model_triggers_retrain_once_at_a_time(tmp_path):
    """The automation `ftflow deploy` creates: a breach event of the recipe's registered model starts `retrain`;
    its concurrency limit cancels a second run while one is under way. (Events reach automations only on a real
    Prefect server: that they fire is the integration test's part.)"""
    from prefect.client.orchestration import get_client

    recipe = load_recipe(DEMO_RECIPE)
    assert CliRunner().invoke(app, ["deploy", "--recipe", str(DEMO_RECIPE)]).exit_code == 0
    with get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name("retrain/retrain")
        [automation] = client.read_resource_related_automations(f"prefect.deployment.{retrain.id}")
    trigger = automation.trigger
    assert trigger.expect == {"ftflow.monitor.breach"} and trigger.threshold == 1
    assert trigger.match.root["prefect.resource.id"] == f"ftflow.model.{recipe.registered_model}"
    assert [a.type for a in automation.actions] == ["run-deployment"]
    assert retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert retrain.parameters["recipe_path"] == str(DEMO_RECIPE)
