"""The demo recipe's model trained without Prefect (collect, clean, init and train called directly), shared by the
benchmarks that measure what comes after training."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_RECIPE = REPO / "data_recipes" / "recipes" / "clinical_qa.yaml"


def train_demo(root: Path, overrides: list[str] | None = None):
    """(recipe, dataset, trained): the demo recipe (with `overrides`) trained in `root`."""
    from ftcore import jobs
    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import collect_stage
    from ftcore.models.init import init_stage
    from ftcore.pins import Pins
    from ftcore.recipe import load_recipe
    from ftcore.training.train import train_stage

    recipe = load_recipe(DEMO_RECIPE, overrides)
    pins = Pins(sources={})  # nothing registered, and no cache to key
    collected = collect_stage(jobs.collect_job(recipe, pins), root / "collect")
    dataset = clean_balance_stage(jobs.clean_job(recipe, collected), root / "clean")
    base = init_stage(jobs.init_job(recipe, pins, dataset), root / "init")
    return recipe, dataset, train_stage(jobs.train_job(recipe, pins, base, dataset), root / "train")
