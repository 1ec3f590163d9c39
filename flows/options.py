"""What a run started from the Prefect dashboard (or a schedule, or a trigger) may change without editing the recipe:
typed flow parameters, so the UI renders a form with a field per option. `ftflow deploy` fills the form in with the
recipe's own values (flows/deployments.py); a field changed there becomes a recipe override, one left as it was
keeps the recipe's value (also when the recipe has changed since)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ftcore.evaluation.config import EvaluateConfig, Metric
from ftcore.models.config import METHOD_NAMES, METHODS, LoraMethod
from ftcore.training.config import TrainConfig

if TYPE_CHECKING:
    from ftcore.recipe import Recipe

MethodName = Literal[tuple(METHOD_NAMES)]  # the form's drop-down: every method a recipe can name
RANKED_METHODS = {m.model_fields["name"].default for m in METHODS if "r" in m.model_fields}


def _default(config: type[BaseModel], name: str) -> Any:
    return config.model_fields[name].get_default(call_default_factory=True)


# Each option and the recipe field it shows and changes. Plain typed fields with a default (no `X | None`): Prefect's
# form shows them as they are, where an optional one is a type picker to toggle first. So a recipe's null is shown as
# the field's empty value below, and setting that value clears the recipe's.
RECIPE_FIELDS = {"method": "method.name", "rank": "method.r", "epochs": "train.epochs",
                 "batch_size": "train.batch_size", "learning_rate": "train.learning_rate",
                 "max_steps": "train.max_steps", "base_model": "model.name_or_path", "metrics": "evaluate.metrics",
                 "fewshot": "evaluate.fewshot", "max_new_tokens": "evaluate.max_new_tokens",
                 "dataset_path": "data.sources.0.path"}
EMPTY = {"max_steps": 0, "base_model": ""}


class RunOptions(BaseModel):
    """The recipe's values, as the deployment's form shows them; a field changed there overrides the recipe."""

    model_config = ConfigDict(extra="forbid")

    method: Annotated[MethodName, Field(
        description="method.name: another method starts from its defaults (and the rank below)")] = "lora"
    rank: Annotated[int, Field(ge=1, description="method.r: the adapter's rank (lora, dora, qlora, loha, lokr)")] = (
        _default(LoraMethod, "r"))
    epochs: Annotated[float, Field(gt=0, description="train.epochs")] = _default(TrainConfig, "epochs")
    batch_size: Annotated[int, Field(ge=1, description="train.batch_size")] = _default(TrainConfig, "batch_size")
    learning_rate: Annotated[float, Field(gt=0, description="train.learning_rate")] = (
        _default(TrainConfig, "learning_rate"))
    max_steps: Annotated[int, Field(ge=0, description="train.max_steps: stop after this many steps; 0: no limit, "
                                                      "the epochs decide")] = 0
    base_model: Annotated[str, Field(description="model.name_or_path: a pretrained model (hub id or local folder) to "
                                                 "start from; empty: the recipe builds one from scratch or continues "
                                                 "its champion (emptied: from scratch)")] = ""
    metrics: Annotated[list[Metric], Field(min_length=1, description="evaluate.metrics")] = Field(
        default_factory=lambda: _default(EvaluateConfig, "metrics"))
    fewshot: Annotated[int, Field(ge=0, le=32, description="evaluate.fewshot: also score the base model shown this "
                                                           "many training examples; 0: off")] = 0
    max_new_tokens: Annotated[int, Field(ge=1, description="evaluate.max_new_tokens: the longest answer generated")] = (
        _default(EvaluateConfig, "max_new_tokens"))
    dataset_path: Annotated[str, Field(description="data.sources.0.path: a file or glob replacing the first data "
                                                   "source's, relative to the recipe's folder")] = ""

    @classmethod
    def of_recipe(cls, recipe: Recipe, recipe_path: Path) -> RunOptions:
        """The recipe's own values (the dataset's path as the recipe writes it: relative to its folder)."""
        tree = recipe.model_dump(mode="json")
        values = {}
        for name, path in RECIPE_FIELDS.items():
            found, value = _lookup(tree, path)
            if found:
                values[name] = EMPTY.get(name) if value is None else value
        if "dataset_path" in values:
            values["dataset_path"] = os.path.relpath(values["dataset_path"], Path(recipe_path).resolve().parent)
        return cls.model_validate(values)

    def overrides(self, shown: RunOptions | None = None) -> list[str]:
        """The fields changed from `shown` (what the form opened with; without it, the fields given) as `a.b=value`
        overrides, applied after the run's own."""
        changed = {name for name in self.model_fields_set
                   if shown is None or getattr(self, name) != getattr(shown, name)}
        if "method" in changed:
            changed.discard("rank")  # in the new method's section
        return [item for name in RECIPE_FIELDS if name in changed for item in self._override(name)]

    def _override(self, name: str) -> list[str]:
        value = getattr(self, name)
        if name == "method":
            section = {"name": value, **({"r": self.rank} if value in RANKED_METHODS else {})}
            return [f"method={json.dumps(section)}"]
        if name == "base_model":  # a base model needs the source that reads it
            return [f"model.source={'pretrained' if value else 'scratch'}",
                    f"model.name_or_path={json.dumps(value or None)}"]
        if name in EMPTY and value == EMPTY[name]:
            value = None
        return [f"{RECIPE_FIELDS[name]}={json.dumps(value)}"]


UNCHANGED = RunOptions()  # no field given: the recipe as it is (the flows' default)


def _lookup(tree: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        elif isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return False, None
    return True, tree


def shown_options() -> dict | None:
    """The options the run's deployment form opened with (the deployment's parameters; a subflow's are its parent
    deployment's); None outside a deployment run (`ftflow run`, a chain, a flow called from code)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    if deployment.id is None:
        return None
    with get_client(sync_client=True) as client:
        return client.read_deployment(UUID(deployment.id)).parameters.get("options", {})
