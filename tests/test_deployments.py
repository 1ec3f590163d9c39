"""The deployments of infra/prefect.yaml registered with Prefect (its test harness), and the typed run options the
dashboard's form offers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.finetune import run_options
from flows.options import RunOptions
from ftcore import tracking
from ftcore.errors import UserError
from ftcore.recipe import load_recipe
from ftcore.stages import Stage
from tests.conftest import DEMO_RECIPE

SMS_RECIPE = DEMO_RECIPE.parent / "shared" / "sms_spam.yaml"


def test_run_options_become_recipe_overrides(tmp_path):
    data = tmp_path / "other.jsonl"
    data.write_bytes((DEMO_RECIPE.parent.parent / "demo" / "clinical_qa.jsonl").read_bytes())
    options = RunOptions(method="dora", rank=4, epochs=2, batch_size=4, learning_rate=3e-4, max_steps=7,
                         base_model=str(tmp_path), metrics=["exact_match"], fewshot=1, max_new_tokens=9,
                         dataset_path=str(data))
    assert options.model_fields_set == set(RunOptions.model_fields)  # every option the form offers, each applied:
    recipe = load_recipe(DEMO_RECIPE, options.overrides())
    assert (recipe.method.name, recipe.method.r, recipe.train.epochs, recipe.train.batch_size) == ("dora", 4, 2, 4)
    assert (recipe.train.learning_rate, recipe.train.max_steps) == (3e-4, 7)
    assert (recipe.model.source, recipe.model.name_or_path) == ("pretrained", str(tmp_path))
    assert (recipe.evaluate.metrics, recipe.evaluate.fewshot, recipe.evaluate.max_new_tokens) == (["exact_match"], 1, 9)
    assert recipe.data.sources[0].path == data.resolve()
    # As a deployment run hands them over: JSON, so a dict.
    assert run_options({"max_steps": 2}) == ["train.max_steps=2"] and run_options(None) == []
    with pytest.raises(UserError, match=r"^options: method: Input should be 'full', .*"):
        run_options({"method": "lora2"})
    with pytest.raises(UserError, match=r"options: learning_rat: unknown field"):
        run_options({"learning_rat": 1e-4})


def test_the_form_shows_the_recipe_and_only_what_is_changed_there_overrides_it():
    recipe = load_recipe(DEMO_RECIPE)
    shown = RunOptions.of_recipe(recipe, DEMO_RECIPE)
    assert shown.model_dump() == {
        "method": "lora", "rank": 8, "epochs": 15, "batch_size": 8, "learning_rate": 5e-3, "max_steps": 0,
        "base_model": "", "metrics": ["exact_match", "token_f1", "perplexity"], "fewshot": 3, "max_new_tokens": 32,
        "dataset_path": "../demo/clinical_qa.jsonl"}  # as the recipe writes it; null max_steps and base model: empty
    # The form submits every field; those left as shown override nothing, also when the recipe changed since.
    submitted = shown.model_dump(mode="json")
    assert RunOptions.model_validate(submitted).overrides(shown) == []
    changed = {**submitted, "epochs": 2, "dataset_path": "../demo/clinical_abbrev_a.jsonl"}
    assert RunOptions.model_validate(changed).overrides(shown) == [
        "train.epochs=2.0", 'data.sources.0.path="../demo/clinical_abbrev_a.jsonl"']
    edited = load_recipe(DEMO_RECIPE, RunOptions.model_validate(changed).overrides(shown))
    assert edited.train.epochs == 2 and edited.data.sources[0].path.name == "clinical_abbrev_a.jsonl"
    # A new method keeps the rank the form shows; the empty value clears a field the recipe sets.
    sms = RunOptions.of_recipe(load_recipe(SMS_RECIPE), SMS_RECIPE)
    assert (sms.rank, sms.base_model) == (16, "sentence-transformers/all-MiniLM-L6-v2")
    cleared = {**sms.model_dump(), "method": "dora", "base_model": "", "max_steps": 0}
    assert RunOptions.model_validate(cleared).overrides(sms) == [
        'method={"name": "dora", "r": 16}', "model.source=scratch", "model.name_or_path=null"]
    limited = RunOptions.model_validate({**submitted, "max_steps": 9})  # a recipe with a step limit
    assert RunOptions.model_validate(submitted).overrides(limited) == ["train.max_steps=null"]
    # Plain typed fields (no `X | None`): Prefect's form shows them without a type picker to toggle.
    assert not [name for name, field in RunOptions.model_json_schema()["properties"].items() if "anyOf" in field]


@pytest.mark.usefixtures("prefect_harness")
def test_ftflow_deploy_registers_a_finetune_form_per_recipe_and_the_schedules(tmp_path):
    from prefect.client.orchestration import get_client

    result = CliRunner().invoke(app, ["deploy", "--retrain-cron", "0 3 * * *"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        deployments = {(flow.name, d.name): d for d in client.read_deployments()
                       for flow in [client.read_flow(d.flow_id)]}
        pool = client.read_work_pool("ftflow-process")
    # The repository's recipes are the dashboard's choice: a finetune deployment each, named after the recipe.
    recipes = {load_recipe(path).name: path for path in DEMO_RECIPE.parent.rglob("*.yaml")}
    assert {name for flow, name in deployments if flow == "finetune"} == set(recipes) and len(recipes) >= 5
    assert {("retrain", "retrain"), ("monitor", "monitor")} <= set(deployments)
    assert pool.type == "process"
    retrain, monitor = deployments["retrain", "retrain"], deployments["monitor", "monitor"]
    finetune = deployments["finetune", "clinical-qa"]
    assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * *"]
    assert [s.schedule.cron for s in monitor.schedules] == ["*/15 * * * *"] and not finetune.schedules
    assert retrain.global_concurrency_limit.limit == 1 and finetune.work_pool_name == "ftflow-process"
    # Each form opens with its recipe's values.
    for name, path in recipes.items():
        shown = deployments["finetune", name].parameters
        assert shown == {"recipe_path": str(path.relative_to(DEMO_RECIPE.parents[2])),
                         "options": RunOptions.of_recipe(load_recipe(path), path).model_dump(mode="json")}
    assert retrain.parameters == finetune.parameters
    assert deployments["finetune", "sms-spam"].parameters["options"]["rank"] == 16
    # The form: typed fields shown as they are (no type picker), the options' drop-down of methods among them.
    schema = finetune.parameter_openapi_schema
    assert {"recipe_path", "overrides", "until", "options"} <= set(schema["properties"])
    assert not [name for name, field in schema["properties"].items() if "anyOf" in field]
    options = schema["definitions"]["RunOptions"]["properties"]
    assert set(options) == set(RunOptions.model_fields)  # every run option, each a recipe override (test above)
    assert "dora" in options["method"]["enum"] and not [field for field in options.values() if "anyOf" in field]
    # The search's form: the recipe, the trials, the time budget, the workers; plain fields too.
    tune = deployments["tune", "tune"]
    assert tune.parameters == {"recipe_path": "data_recipes/recipes/clinical_qa.yaml"}
    fields = tune.parameter_openapi_schema["properties"]
    assert {"recipe_path", "n_trials", "timeout_s", "workers"} <= set(fields)
    assert not [name for name, field in fields.items() if "anyOf" in field]

    # Registered again, they are updated in place.
    again = CliRunner().invoke(app, ["deploy", "--monitor-cron", "0 * * * *"])
    assert again.exit_code == 0, again.output
    with get_client(sync_client=True) as client:
        monitor_again = client.read_deployment(monitor.id)
    assert [s.schedule.cron for s in monitor_again.schedules] == ["0 * * * *"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_dashboard_run_carries_the_form_s_parameters_and_only_its_changes_override(monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runtime import deployment

    assert CliRunner().invoke(app, ["deploy"]).exit_code == 0
    with get_client(sync_client=True) as client:
        shown = client.read_deployment_by_name("finetune/clinical-qa").parameters["options"]
    # As the form submits it: every field, one changed.
    run = run_deployment("finetune/clinical-qa", parameters={"options": {**shown, "max_steps": 3}}, timeout=0)
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run.id)
    assert stored.parameters == {"recipe_path": "data_recipes/recipes/clinical_qa.yaml",
                                 "options": {**shown, "max_steps": 3}}
    assert stored.state.is_scheduled()  # a worker on ftflow-process picks it up
    # In that run (deployment.id is the run's deployment), the flow compares the form with what its deployment
    # showed, so only the changed field overrides the recipe (test_servers.py runs one for real).
    monkeypatch.setitem(deployment.FIELDS, "id", lambda: str(stored.deployment_id))
    assert run_options(stored.parameters["options"]) == ["train.max_steps=3"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_records_its_overrides_in_mlflow_and_its_summary():
    from flows.finetune import OVERRIDES_TAG, finetune

    summary = finetune(str(DEMO_RECIPE), ["train.epochs=2"], Stage.collect, RunOptions(max_steps=3))
    assert summary["overrides"] == ["train.epochs=2", "train.max_steps=3"]  # --set's, then the form's
    run = tracking.client().get_run(summary["mlflow_run_id"])
    assert json.loads(run.data.tags[OVERRIDES_TAG]) == summary["overrides"]
    assert (run.data.params["train.epochs"], run.data.params["train.max_steps"]) == ("2.0", "3")


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
