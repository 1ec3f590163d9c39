"""`ftflow tune`'s preview (--dry-run, which runs nothing) and its one-line errors; the search itself is in
tests/e2e/test_tune_flow.py and tests/e2e/test_tune_processes.py."""

import json

from typer.testing import CliRunner

from flows.cli import app
from ftcore.paths import home
from tests.conftest import DEMO_RECIPE

runner = CliRunner()
METHODS = 'tune.space={"method.name": {"choice": ["lora", "ia3"]}, "train.epochs": {"int": [5, 30]}}'


def test_dry_run_prints_the_space_the_budget_and_each_methods_cost_and_runs_nothing():
    result = runner.invoke(app, ["tune", str(DEMO_RECIPE), "--dry-run", "--trials", "7"])
    assert result.exit_code == 0, result.output
    assert "study clinical-qa-" in result.output and ": new" in result.output
    assert "train.learning_rate   log_uniform [0.001, 0.02]" in result.output
    assert "budget: 7 trials" in result.output and "lora" in result.output
    assert not (home() / "runs").exists()  # nothing ran


def test_dry_run_json_estimates_each_searched_method_and_the_epochs_range():
    result = runner.invoke(app, ["tune", str(DEMO_RECIPE), "--dry-run", "--json", "--set", METHODS])
    assert result.exit_code == 0, result.output
    preview = json.loads(result.stdout)
    assert set(preview["cost_per_trial"]) == {"lora", "ia3"}
    lora, ia3 = preview["cost_per_trial"]["lora"], preview["cost_per_trial"]["ia3"]
    assert 0 < ia3["trainable_params"] < lora["trainable_params"]  # ia3 scales activations: far fewer
    assert preview["epochs_scale"] == [5 / 15, 30 / 15]  # the demo trains 15 epochs
    assert preview["trials_so_far"] == 0 and preview["n_trials"] == 12


def test_a_recipe_without_a_tune_section_is_one_line_and_exit_2():
    for args in (["--dry-run"], []):
        result = runner.invoke(app, ["tune", str(DEMO_RECIPE), "--set", "tune=null", *args])
        assert result.exit_code == 2
        assert result.output.strip() == f"error: {DEMO_RECIPE}: has no tune: section to search; add one " \
                                        "(docs/tune.md)"
