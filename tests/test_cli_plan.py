"""`ftflow plan`: the table, --json, one-line errors with exit 2, and no Prefect."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import DEMO_RECIPE, REPO

runner = CliRunner()


def test_plan_prints_the_methods_and_a_recommendation_for_the_demo_recipe():
    result = runner.invoke(app, ["plan", str(DEMO_RECIPE)])
    assert result.exit_code == 0, result.output
    assert "recommendation: LoRA r=8 (all-linear)" in result.output
    assert "lora *" in result.output and "qlora" in result.output
    assert "train rows: LoRA rather than full fine-tuning" in result.output


def test_plan_json_with_a_memory_budget():
    result = runner.invoke(app, ["plan", str(DEMO_RECIPE), "--set", "method={name: full}", "--memory-gb", "64",
                                 "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["recipe_method"] == "full" and plan["estimates"]["full"]["is_recipe"]
    assert plan["budget"] == {"bytes": 64e9, "source": "--memory-gb"}
    assert plan["model"]["total_params"] == plan["estimates"]["full"]["trainable_params"]
    assert plan["recommendation"]["method"] == "lora"  # a few hundred rows: an adapter rather than full FT


def test_plan_exits_2_with_one_line_on_a_bad_recipe(tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope.yaml'}: recipe file not found"
    result = runner.invoke(app, ["plan", str(DEMO_RECIPE), "--set", "method.rank=4"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "method.rank: unknown field" in result.output


def test_plan_does_not_import_prefect():
    code = ("import sys; from typer.testing import CliRunner; from flows.cli import app; "
            f"r = CliRunner().invoke(app, ['plan', {str(DEMO_RECIPE)!r}, '--json']); "
            "print(r.exit_code, 'prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr[-2000:]


def test_plan_estimates_a_classification_recipe_as_a_classifier(tmp_path):
    from tests.ftcore.objective_fixtures import objective_recipe, recipe_file

    recipe = recipe_file(tmp_path, objective_recipe(tmp_path / "data", "classification"))
    result = runner.invoke(app, ["plan", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["model"]["architecture"] == "LlamaForSequenceClassification" and plan["model"]["num_labels"] == 2
    assert plan["data"]["classes"] == ["ham", "spam"]
    assert "few_shot" not in plan["estimates"] and "few_shot" in plan["left_out"]


def test_plan_refuses_a_preference_recipe_in_one_line(tmp_path):
    from tests.ftcore.objective_fixtures import objective_recipe, recipe_file

    recipe = recipe_file(tmp_path, objective_recipe(tmp_path / "data", "dpo"))
    result = runner.invoke(app, ["plan", str(recipe)])
    assert result.exit_code == 2
    assert result.output.startswith("error: objective: dpo is not estimated yet")
    assert len(result.output.strip().splitlines()) == 1


def test_plan_refuses_a_merge_recipe_which_trains_nothing_in_one_line():
    recipe = Path(__file__).parents[1] / "data_recipes" / "recipes" / "merge_abbreviations.yaml"
    result = runner.invoke(app, ["plan", str(recipe)])
    assert result.exit_code == 2
    assert result.output.startswith("error: merge: a merge recipe trains nothing, so there is no training to plan")
    assert len(result.output.strip().splitlines()) == 1
