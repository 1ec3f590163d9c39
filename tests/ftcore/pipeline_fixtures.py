"""Stage outputs built once per test module: the demo data, cleaned, on a tiny scratch model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore import tracking
from ftcore.data.clean import clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.deploy.config import DeployConfig
from ftcore.deploy.publish import DeployJob
from ftcore.jobs import clean_job
from ftcore.models.init import InitJob, init_stage
from ftcore.outputs import DatasetOutput, EvalOutput, ModelOutput, TrainOutput
from ftcore.recipe import Recipe, load_recipe
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES


@dataclass
class Prepared:
    recipe: Recipe
    dataset: DatasetOutput
    base: ModelOutput


def demo_dataset(recipe: Recipe, root: Path) -> DatasetOutput:
    """The recipe's data, collected and cleaned under `root`: what the init stage reads."""
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), root / "collected")
    return clean_balance_stage(clean_job(recipe, collected), root / "clean")


def prepare(root: Path, *overrides: str, tiny: bool = True) -> Prepared:
    """The demo's stages up to init; `tiny=False` keeps the demo's own model size and schedule."""
    recipe = load_recipe(DEMO_RECIPE, [*(TINY_OVERRIDES if tiny else []), *overrides])
    dataset = demo_dataset(recipe, root)
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec),
                      root / "init")
    return Prepared(recipe, dataset, base)


def deploy_job_of(trained: TrainOutput, evaluation: EvalOutput, gate: list, name: str,
                  dataset: DatasetOutput | None = None, **deploy: Any) -> DeployJob:
    """The deploy stage's job for a recipe whose deploy section has `gate` (and `deploy`'s other fields), registering
    `name` in this test's FTFLOW_HOME."""
    return DeployJob(trained=trained, evaluation=evaluation, deploy=DeployConfig(gate=gate, **deploy),
                     registered_model=name, tracking_uri=tracking.tracking_uri(), dataset=dataset)
