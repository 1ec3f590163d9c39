"""Stage outputs built once per test module: the demo data, cleaned, on a tiny scratch model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftcore.config import Recipe, load_recipe
from ftcore.data.clean import clean_and_split
from ftcore.data.collect import collect
from ftcore.models.init import init_model
from ftcore.outputs import DatasetOutput, ModelOutput
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES


@dataclass
class Prepared:
    recipe: Recipe
    dataset: DatasetOutput
    base: ModelOutput


def prepare(root: Path, *overrides: str) -> Prepared:
    recipe = load_recipe(DEMO_RECIPE, [*TINY_OVERRIDES, *overrides])
    collected = collect(recipe.data, root / "collected")
    dataset = clean_and_split(collected, recipe.clean, recipe.balance, recipe.data, root / "clean")
    base = init_model(recipe.model, recipe.method, dataset, root / "init")
    return Prepared(recipe, dataset, base)
