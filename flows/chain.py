"""The `chain` flow: several recipes in order, each a `finetune` run, e.g. SFT, then a reward model, then RL
(docs/alignment.md). A recipe that starts from a registered model (`model.source: champion`) or is rewarded by one
(`reward.model: models:/NAME@ALIAS`) that an earlier recipe of the chain registered gets exactly the version that
recipe produced, whether or not its gate made it champion: the chain continues what it just trained."""

from __future__ import annotations

from prefect import flow

from flows.finetune import finetune
from ftcore.recipe import Recipe, load_recipe


@flow(name="chain", log_prints=False, validate_parameters=False)
def chain(recipe_paths: list[str], overrides: list[str] | None = None) -> list[dict]:
    """Run each recipe's finetune flow in order (`overrides` apply to every recipe); stops at the first failure."""
    produced: dict[str, int] = {}  # registered model -> the version this chain registered
    summaries = []
    for path in recipe_paths:
        pins = pinned_versions(load_recipe(path, overrides), produced)
        summary = finetune(path, [*(overrides or []), *pins])
        produced[summary["model"]["name"]] = int(summary["model"]["version"])
        summaries.append(summary)
    return summaries


def pinned_versions(recipe: Recipe, produced: dict[str, int]) -> list[str]:
    """Overrides that point the recipe's starting model and reward model at the versions produced earlier."""
    pins = []
    start = recipe.model.registered_model or recipe.registered_model
    if recipe.model.source == "champion" and recipe.model.version is None and start in produced:
        pins.append(f"model.version={produced[start]}")
    registered = recipe.reward.registered_model() if recipe.reward else None
    if registered and registered[2] is None and registered[0] in produced:
        pins.append(f"reward.model=models:/{registered[0]}/{produced[registered[0]]}")
    return pins
