"""What a run pins before any stage (ftcore/pins.py), without Prefect: the sources by content, the champion and
its model hash from the registry, the retained data of continual learning."""

from __future__ import annotations

import shutil

from ftcore import tracking, versions
from ftcore.deploy.publish import MODEL_HASH_TAG
from ftcore.hashing import hash_file
from ftcore.pins import pin, rival
from ftcore.recipe import load_recipe
from tests.conftest import DEMO_RECIPE, REPO


def demo_copy(tmp_path):
    """The demo recipe with the files it names beside it, so the test can edit its data file."""
    shutil.copytree(REPO / "data_recipes" / "demo", tmp_path / "demo")
    recipe = tmp_path / "recipes" / "clinical_qa.yaml"
    recipe.parent.mkdir()
    shutil.copy(DEMO_RECIPE, recipe)
    return recipe, tmp_path / "demo" / "clinical_qa.jsonl"


def test_a_recipe_with_nothing_registered_pins_its_sources_only(tmp_path):
    recipe_path, data = demo_copy(tmp_path)
    pins = pin(load_recipe(recipe_path))
    assert pins.sources == {str(data): hash_file(data)}
    assert (pins.start, pins.reward_model, pins.champion, pins.retained, pins.forgetting) == (None,) * 5
    with data.open("a", encoding="utf-8") as f:
        f.write('{"question": "What does BP stand for?", "answer": "blood pressure"}\n')
    assert pin(load_recipe(recipe_path)).sources[str(data)] != pins.sources[str(data)]


def test_the_champion_is_pinned_with_its_model_hash_and_is_no_rival_to_itself(tmp_path):
    recipe = load_recipe(DEMO_RECIPE)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    run_id = tracking.start_pipeline_run(recipe.name, "run", {}, {})
    version = versions.register_version(run_id, recipe.registered_model, model, {MODEL_HASH_TAG: "h1"})
    versions.set_alias(recipe.registered_model, versions.CHAMPION, version)

    champion = pin(recipe).champion
    assert champion.ref.version == version and champion.model_hash == "h1"
    assert rival(champion, "h1") is None  # the candidate is the champion itself: nothing to compare
    assert rival(champion, "h2") == champion.ref


def test_continual_learning_pins_its_retained_file_and_measures_forgetting_on_it(tmp_path):
    general = tmp_path / "general.jsonl"
    general.write_text("".join(f'{{"prompt": "Q{i}: ", "completion": "A{i}"}}\n' for i in range(40)))
    recipe = load_recipe(DEMO_RECIPE, [f"continual.data={general}"])
    pins = pin(recipe)
    assert pins.retained is not None and pins.forgetting == pins.retained
    assert pins.retained.train.is_file() and pins.retained.test.is_file()
