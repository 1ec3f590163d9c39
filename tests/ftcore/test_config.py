from pathlib import Path

import pytest
import yaml

from ftcore.errors import RecipeError
from ftcore.recipe import Recipe, apply_override, load_recipe
from tests.conftest import DEMO_RECIPE, REPO, SHARED_DATA

ALL_RECIPES = sorted((REPO / "data_recipes" / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path):
    if path.parent.name == "shared" and not SHARED_DATA.is_dir():
        pytest.skip("recipes/shared/ reads ../shared/data, absent in a user's own clone")
    assert isinstance(load_recipe(path), Recipe)


def _write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _demo(tmp_path: Path) -> dict:
    raw = yaml.safe_load(DEMO_RECIPE.read_text())
    raw["data"]["sources"][0]["path"] = str(DEMO_RECIPE.parent / raw["data"]["sources"][0]["path"])
    return raw


def test_overrides_are_parsed_as_yaml_and_reach_nested_fields(tmp_path):
    recipe = load_recipe(DEMO_RECIPE, ["train.learning_rate=1e-4", "method.r=4", "clean.steps.3.min_chars=5"])
    assert recipe.train.learning_rate == pytest.approx(1e-4)
    assert recipe.method.r == 4
    assert recipe.clean.steps[3].params == {"min_chars": 5}


def test_every_problem_is_reported_with_file_and_field(tmp_path):
    raw = _demo(tmp_path)
    raw["train"]["epochs"] = "many"
    raw["method"]["rank"] = 8
    path = _write(tmp_path, raw)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    problems = err.value.problems
    assert any(p.startswith(f"{path}: train.epochs:") and "number" in p for p in problems)
    assert any(p.startswith(f"{path}: method.rank: unknown field") for p in problems)


def test_missing_data_file_names_the_file(tmp_path):
    raw = _demo(tmp_path)
    raw["data"]["sources"][0]["path"] = "nowhere.jsonl"
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, raw))
    assert "data.sources.0.path" in str(err.value) and str(tmp_path / "nowhere.jsonl") in str(err.value)


def test_cleaning_step_params_are_validated_at_load_time(tmp_path):
    with pytest.raises(RecipeError, match=r"clean\.steps\.2: step 'drop_empty': min_chars: Input should be a valid"):
        load_recipe(DEMO_RECIPE, ["clean.steps.2.min_chars=lots"])
    with pytest.raises(RecipeError, match="unknown cleaning step 'no_such_step'"):
        load_recipe(DEMO_RECIPE, ["clean.steps.0.step=no_such_step"])


def test_gate_metric_must_be_evaluated():
    with pytest.raises(RecipeError, match=r"deploy\.gate\.0 \(beat_champion\): metric 'perplexity' must be one of "
                                          r"evaluate\.metrics"):
        load_recipe(DEMO_RECIPE, ["evaluate.metrics=[exact_match]", "deploy.gate.0.metric=perplexity"])


def test_gate_rules_need_what_they_judge_measured():
    with pytest.raises(RecipeError, match=r"needs a forgetting set: evaluate\.forgetting\.data"):
        load_recipe(DEMO_RECIPE, ['deploy.gate=[{rule: beat_champion}, {rule: max_forgetting, max: 0.1}]'])
    with pytest.raises(RecipeError, match="needs exactly one beat_champion rule"):
        load_recipe(DEMO_RECIPE, ["deploy.gate=[{rule: max_toxicity}]"])
    with pytest.raises(RecipeError, match="unknown domain metric 'nope'"):
        load_recipe(DEMO_RECIPE, ["evaluate.domain_metrics=[{metric: nope}]"])
    with pytest.raises(RecipeError, match=r"evaluate\.fewshot: prompting with examples applies to objectives sft"):
        load_recipe(DEMO_RECIPE, ["task=dapt", "data.format=text", "evaluate.metrics=[perplexity]",
                                  "deploy.gate=[{rule: beat_champion}]", "evaluate.fewshot=2"])
    recipe = load_recipe(DEMO_RECIPE, ["deploy.gate=[{rule: beat_champion, metric: clinical_terms}]"])
    assert recipe.deploy.primary.metric == "clinical_terms"


def test_pretrained_without_a_name_is_rejected():
    with pytest.raises(RecipeError, match="name_or_path"):
        load_recipe(DEMO_RECIPE, ["model.source=pretrained"])


def test_bad_override_syntax_is_a_recipe_error():
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(DEMO_RECIPE, ["train.epochs"])


def test_apply_override_creates_missing_mappings():
    tree = {"a": {"b": 1}}
    apply_override(tree, "a.c.d=[1, 2]")
    assert tree == {"a": {"b": 1, "c": {"d": [1, 2]}}}


def test_recipe_hash_changes_with_content():
    assert load_recipe(DEMO_RECIPE).content_hash() == load_recipe(DEMO_RECIPE).content_hash()
    assert load_recipe(DEMO_RECIPE).content_hash() != load_recipe(DEMO_RECIPE, ["train.seed=1"]).content_hash()


@pytest.mark.parametrize("section", ["train", "monitor"])
def test_the_defaults_docs_recipes_md_shows_are_the_ones_applied(section):
    """docs/recipes.md shows these sections field by field with their defaults: what it shows must be what a field
    left out gets."""
    from ftcore.monitor.config import MonitorConfig
    from ftcore.training.config import TrainConfig

    shown = yaml.safe_load((REPO / "docs" / "recipes.md").read_text().split("```yaml\n", 1)[1].split("```", 1)[0])
    config = {"train": TrainConfig, "monitor": MonitorConfig}[section]
    assert config.model_validate(shown[section]) == config()


def test_task_the_objective_s_old_name_keeps_working(tmp_path):
    """Recipes and overrides written with `task:` (the objective's name before) load as before; a recipe that gives
    both names is refused in one line."""
    old = tmp_path / "old.yaml"
    old.write_text(DEMO_RECIPE.read_text().replace("objective: sft", "task: sft").replace("../demo/", str(
        DEMO_RECIPE.parents[1] / "demo") + "/"))
    assert load_recipe(old).objective == "sft"
    overridden = load_recipe(DEMO_RECIPE, ["task=dapt", "data.format=text", "evaluate.metrics=[perplexity]",
                                           "deploy.gate=[{rule: beat_champion}]", "evaluate.fewshot=0",
                                           "evaluate.domain_metrics=[]"])
    assert overridden.objective == "dapt" and overridden.spec.scorer == "text"
    with pytest.raises(RecipeError) as wrong:  # a problem names the key as the recipe or the override wrote it
        load_recipe(DEMO_RECIPE, ["task=bogus"])
    assert wrong.value.problems[0].endswith("task: Input should be 'sft', 'dapt', 'classification', 'multitask', "
                                            "'dpo', 'reward_model', 'rl' or 'vision_language', got 'bogus'")
    both = tmp_path / "both.yaml"
    both.write_text(old.read_text().replace("task: sft", "task: sft\nobjective: sft"))
    with pytest.raises(RecipeError, match=r"both\.yaml: task: is the old name of objective:; give only objective"):
        load_recipe(both)


@pytest.mark.parametrize(("override", "problem"), [
    ("train.learning_rat=1e-4", "train.learning_rat: unknown field; did you mean learning_rate?"),
    ("data.sources.0.colums={a: b}", "data.sources.0.colums: unknown field; did you mean columns?"),
    ("data.tasks={qa: {wieght: 2}}", "data.tasks.qa.wieght: unknown field; did you mean weight?"),
    ("clean.steps=[{step: drop_short, min_char: 5}]", "clean.steps.0: step 'drop_short': min_char: unknown field; "
                                                       "did you mean min_chars?"),
    ("method.rr=4", "method.rr: unknown field for method lora; did you mean r?"),
    ("zzz=1", "zzz: unknown field (check the spelling; see docs/recipes.md for the fields)"),
])
def test_an_unknown_field_is_answered_with_the_closest_fields_where_it_stands(override, problem):
    """The suggestions come from the fields of the model at the field's place (a source, a task's mixture entry, a
    step's parameters, the recipe's method), however deep, a typo only: nothing close, no guess."""
    with pytest.raises(RecipeError) as e:
        load_recipe(DEMO_RECIPE, [override])
    assert any(p.endswith(problem) for p in e.value.problems), e.value.problems


def test_deploy_export_tolerance_still_reads_its_old_name():
    from ftcore.deploy.config import DeployConfig

    for name in ("export_tolerance", "int8_tolerance"):
        assert DeployConfig.model_validate({name: 0.1}).export_tolerance == 0.1
