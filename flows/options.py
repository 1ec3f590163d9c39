"""What a run started from the Prefect dashboard (or a schedule, or a trigger) may change without editing the recipe:
typed flow parameters, so the UI renders a form with a field per option, each turned into a recipe override."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ftcore.models.config import METHOD_NAMES

MethodName = Literal[tuple(METHOD_NAMES)]  # the form's drop-down: every method a recipe can name


class RunOptions(BaseModel):
    """Each field left empty keeps the recipe's value."""

    model_config = ConfigDict(extra="forbid")

    method: Annotated[MethodName | None, Field(
        description="the fine-tuning method, with its defaults (replaces the recipe's method section)")] = None
    learning_rate: Annotated[float | None, Field(gt=0, description="train.learning_rate")] = None
    max_steps: Annotated[int | None, Field(ge=1, description="train.max_steps: stop after this many steps")] = None
    dataset_path: Annotated[str | None, Field(
        description="a file or glob replacing the recipe's first data source's path")] = None

    def overrides(self) -> list[str]:
        """The options as `a.b=value` overrides, applied after the run's own."""
        values = {"method": None if self.method is None else f"{{name: {self.method}}}",
                  "train.learning_rate": self.learning_rate, "train.max_steps": self.max_steps,
                  "data.sources.0.path": self.dataset_path}
        return [f"{key}={value}" for key, value in values.items() if value is not None]
