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
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ftcore.alignment_config import (  # noqa: F401  re-exported: the recipe's alignment sections
    ContinualConfig,
    PreferenceConfig,
    RegularizerConfig,
    RewardConfig,
    RewardFunctionSpec,
    RlConfig,
)
from ftcore.data.sources.config import MAX_RETRIES, MAX_WAIT_S, Fraction, Seed, Strict, describe_error
from ftcore.data_config import (  # noqa: F401  re-exported: the recipe's data sections, split from here
    FORMAT_COLUMNS,
    LABEL_COLUMN,
    TEXT_COLUMNS,
    AugmentConfig,
    BalanceConfig,
    CleanConfig,
    DataConfig,
    DataFormat,
    SplitConfig,
    StepSpec,
    TaskMix,
)
from ftcore.errors import DataError, RecipeError
from ftcore.evaluate_config import (  # noqa: F401  re-exported: the recipe's evaluate and deploy sections
    ANSWERING_TASKS,
    GENERATION,
    LOWER_IS_BETTER,
    TASK_METRICS,
    BeatChampion,
    DeployConfig,
    EvaluateConfig,
    GateRule,
    MaxBias,
    MaxForgetting,
    MaxLatency,
    MaxToxicity,
    Metric,
)
from ftcore.hashing import hash_obj
from ftcore.method_config import LoraMethod, MethodConfig
from ftcore.monitor_config import MonitorConfig  # re-exported: the recipe's monitor section
from ftcore.recipe_yaml import MAX_DEPTH, Refused, describe_yaml_error, parse_yaml, read_yaml_file


class Stage(StrEnum):
    collect = "collect"
    clean_balance = "clean_balance"
    init = "init"
    train = "train"
    evaluate = "evaluate"
    deploy = "deploy"
    monitor = "monitor"


STAGES: list[Stage] = list(Stage)


# The data formats each task trains on. Task rl reads only the prompts (and passes the other columns, e.g. a
# reference completion, to the reward functions).
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt_completion", "messages"),
    "dapt": ("text",),
    "classification": ("text_label",),
    "multitask": ("prompt_completion", "messages"),
    "dpo": ("preference",),
    "reward_model": ("preference",),
    "rl": ("prompt_completion", "preference"),
}
Task = Literal["sft", "dapt", "classification", "multitask", "dpo", "reward_model", "rl"]
# Language-model tasks whose forgetting the evaluate stage measures with their own metrics.
CONTINUAL_TASKS = ("sft", "dapt", "multitask")


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
    seed: Seed = 0

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
    source: Literal["scratch", "pretrained", "champion"] = Field(
        "scratch", description="champion: continue from a registered model's champion (or `version`)")
    name_or_path: str | None = None
    trust_remote_code: bool = False
    scratch: ScratchModelConfig = ScratchModelConfig()
    registered_model: str | None = Field(None, description="source champion: the registered model to start from; "
                                                           "default: this recipe's own (continual retraining)")
    version: int | None = Field(None, ge=1, description="source champion: this version instead of the champion (a "
                                                         "chain pins the one it produced)")
    start: Literal["merged", "adapter"] = Field(
        "merged", description="source champion: merged: its weights, merged with its adapter, are the new base and "
                              "the method starts afresh on them; adapter: keep training its own adapter on its base")
    @model_validator(mode="after")
    def _source_has_what_it_needs(self) -> ModelConfig:
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError("source: pretrained needs name_or_path (a local folder or a hub id)")
        champion_only = {"registered_model", "version", "start"} & self.model_fields_set
        if self.source != "champion" and champion_only:
            raise ValueError(f"{', '.join(sorted(champion_only))}: only for source: champion")
        return self


class DistributedConfig(Strict):
    """Training in several processes, launched through accelerate (docs/scale-out.md). The global batch is
    num_processes x batch_size x gradient_accumulation_steps."""

    num_processes: int = Field(1, ge=1, description="processes over all machines, one per GPU (on CPU, each gets "
                                                    "its share of the cores); 1: train in the stage's own process")
    backend: Literal["gloo", "nccl"] | None = Field(None, description="collective backend; none: nccl on CUDA GPUs, "
                                                                      "gloo on CPU")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full copy per process; fsdp: parameters, gradients and optimizer state sharded "
                           "(FSDP2); deepspeed: ZeRO at zero_stage (needs the deepspeed package)")
    zero_stage: Literal[1, 2, 3] | None = Field(None, description="strategy deepspeed: what ZeRO shards (1 optimizer "
                                                                 "state, 2 and gradients, 3 and parameters); none: 2")
    num_machines: int = Field(1, ge=1, description="machines taking part; every one runs the launch command the "
                                                   "stage logs (docs/scale-out.md)")
    main_process: str | None = Field(None, pattern=r"^[^:\s]+:\d{1,5}$",
                                     description="num_machines > 1: host:port of machine 0's rendezvous")

    @model_validator(mode="after")
    def _machines_fit(self) -> DistributedConfig:
        if self.zero_stage is not None and self.strategy != "deepspeed":
            raise ValueError("zero_stage: only for strategy: deepspeed")
        if self.strategy != "ddp" and self.num_processes == 1:
            raise ValueError(f"strategy {self.strategy} shards over processes: set num_processes above 1")
        if self.num_machines > 1 and self.main_process is None:
            raise ValueError("num_machines > 1 needs main_process (host:port of machine 0, reachable from the others)")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) must be a multiple of num_machines "
                             f"({self.num_machines}): each machine runs the same number")
        return self

    @property
    def enabled(self) -> bool:
        return self.num_processes > 1


class TrainConfig(Strict):
    # Bounded: the trainer turns epochs into a step count (1e400 is inf and overflows; 1e300 never ends).
    epochs: float = Field(3, gt=0, le=10_000)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5.0e-3, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: Fraction = 0.0
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(128, ge=8)
    logging_steps: int = Field(10, ge=1)
    seed: Seed = 0
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
    preference: PreferenceConfig = PreferenceConfig()
    rl: RlConfig = RlConfig()
    distributed: DistributedConfig = DistributedConfig()

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
    retries: int = Field(2, ge=0, le=MAX_RETRIES)
    retry_delay_s: float = Field(2.0, ge=0, le=MAX_WAIT_S, description="first retry delay; doubles on each further "
                                                                        "retry")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Task = "sft"
    data: DataConfig
    clean: CleanConfig = CleanConfig()
    balance: BalanceConfig = BalanceConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = LoraMethod()
    reward: RewardConfig | None = Field(None, description="task rl: what the policy is rewarded for")
    continual: ContinualConfig | None = Field(None, description="replay, regulariser and forgetting (sft, dapt, "
                                                                "multitask)")
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
        if self.train.packing and self.task not in ("sft", "dapt", "multitask"):
            raise ValueError(f"train.packing: task {self.task} scores one sequence at a time; remove packing")
        return self

    @model_validator(mode="after")
    def _the_adapter_can_be_continued(self) -> Recipe:
        from ftcore.models.peft_methods import can_continue  # imports no PEFT until a model is built

        if self.model.start == "adapter" and not can_continue(self.method):
            raise ValueError(f"model.start: adapter continues the champion's adapter, which method {self.method.name} "
                             "cannot (lora, qlora, ia3, loha, lokr and adapter can; dora, prompt learning and full "
                             "cannot); use start: merged")
        return self

    @model_validator(mode="after")
    def _exports_fit_the_method(self) -> Recipe:
        # Known from the recipe alone, so refused here rather than by the deploy stage after training.
        from ftcore.deploy.export import planned_export_problems

        problems = planned_export_problems(self.method, self.deploy.exports)
        if problems:
            raise ValueError("deploy.exports: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _alignment_options_fit_the_task(self) -> Recipe:
        if (self.task == "rl") != (self.reward is not None):
            raise ValueError("reward: task rl needs it (what the policy is rewarded for), other tasks take none")
        for section, task in (("preference", "dpo"), ("rl", "rl")):
            if section in self.train.model_fields_set and self.task != task:
                raise ValueError(f"train.{section}: only for task {task}")
        if self.continual is not None:
            if self.task not in CONTINUAL_TASKS:
                raise ValueError(f"continual: for tasks {', '.join(CONTINUAL_TASKS)}, not {self.task!r}")
            if self.continual.data == "champion" and self.model.source != "champion":
                raise ValueError("continual.data: champion is the dataset of the version the model starts from; set "
                                 "model.source: champion, or give a file of general data")
        if self.task == "rl" and self.train.batch_size % self.train.rl.num_generations:
            raise ValueError(f"train.batch_size ({self.train.batch_size}) must be a multiple of "
                             f"train.rl.num_generations ({self.train.rl.num_generations}): each batch holds whole "
                             "groups of answers to one prompt")
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
        if isinstance(deploy, dict) and isinstance(evaluate, dict):
            metrics = evaluate.get("metrics") or []
            default = TASK_METRICS[task][0]
            default = default if default in metrics else (metrics[0] if metrics else default)
            gate = deploy.get("gate") or [{"rule": "beat_champion"}]
            if isinstance(gate, list):
                gate = [{**rule, "metric": default} if isinstance(rule, dict) and rule.get("rule") == "beat_champion"
                        and rule.get("metric") is None else rule for rule in gate]
            raw["deploy"] = {**deploy, "gate": gate}
        return raw

    @model_validator(mode="after")
    def _metrics_fit_the_task(self) -> Recipe:
        allowed = TASK_METRICS[self.task]
        unfit = [m for m in self.evaluate.metrics if m not in allowed]
        if unfit:
            raise ValueError(f"evaluate.metrics: {', '.join(unfit)} cannot score task {self.task!r}; use "
                             f"{', '.join(allowed)}")
        return self

    @model_validator(mode="after")
    def _evaluation_fits_the_task(self) -> Recipe:
        evaluate = self.evaluate
        if evaluate.fewshot and self.task not in ("sft", "multitask"):
            raise ValueError(f"evaluate.fewshot: prompting with examples applies to tasks sft and multitask, not "
                             f"{self.task!r}; remove it")
        if evaluate.domain_metrics and self.task not in ("sft", "multitask"):
            raise ValueError("evaluate.domain_metrics: score generated answers against references (tasks sft and "
                             f"multitask), not task {self.task!r}")
        if evaluate.cross_validation and self.task not in ("sft", "multitask", "dapt", "classification"):
            raise ValueError(f"evaluate.cross_validation: for tasks sft, multitask, dapt and classification, not "
                             f"{self.task!r}")
        if evaluate.forgetting is not None and self.task not in CONTINUAL_TASKS:
            raise ValueError(f"evaluate.forgetting: for tasks {', '.join(CONTINUAL_TASKS)}, not {self.task!r}")
        return self

    @model_validator(mode="after")
    def _gate_rules_can_be_decided(self) -> Recipe:
        """Every gate rule needs something the evaluate stage measures for this recipe."""
        evaluate, rules = self.evaluate, self.deploy.gate
        scored = [*evaluate.metrics, *evaluate.domain_metric_names]
        for i, rule in enumerate(rules):
            where = f"deploy.gate.{i} ({rule.rule})"
            match rule:
                case BeatChampion(metric=metric) if metric not in scored:
                    raise ValueError(f"{where}: metric {metric!r} must be one of evaluate.metrics or "
                                     f"evaluate.domain_metrics {scored}")
                case MaxForgetting(metric=metric):
                    if evaluate.forgetting is None and self.continual is None:
                        raise ValueError(f"{where}: needs a forgetting set: evaluate.forgetting.data (or continual)")
                    if metric not in evaluate.metrics:
                        raise ValueError(f"{where}: metric {metric!r} must be one of evaluate.metrics "
                                         f"{evaluate.metrics}")
                case MaxToxicity() if self.task not in ANSWERING_TASKS or evaluate.safety.toxicity is None:
                    raise ValueError(f"{where}: needs evaluate.safety.toxicity and a task whose model answers "
                                     f"prompts ({', '.join(ANSWERING_TASKS)})")
                case MaxBias() if self.task not in ANSWERING_TASKS or evaluate.safety.bias is None:
                    raise ValueError(f"{where}: needs evaluate.safety.bias and a task whose model answers prompts "
                                     f"({', '.join(ANSWERING_TASKS)})")
                case MaxLatency() if evaluate.latency_probes == 0:
                    raise ValueError(f"{where}: needs evaluate.latency_probes > 0")
        return self

    @property
    def registered_model(self) -> str:
        return self.deploy.registered_model or self.name

    def content_hash(self) -> str:
        return hash_obj(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply `a.b=value` overrides (values parsed as YAML) and validate it.

    Raises RecipeError listing every problem as `FILE: field.path: what was expected` (or `FILE: line N: ...` for
    YAML that cannot be read): a bad override does not hide the fields' own problems.
    """
    path = Path(path)
    if path.is_dir():
        raise RecipeError([f"{path}: is a folder; give the recipe's YAML file in it"])
    if not path.is_file():
        raise RecipeError([f"{path}: recipe file not found"])
    try:
        raw = read_yaml_file(path)
    except OSError as e:
        raise RecipeError([f"{path}: cannot read the recipe ({e.strerror})"]) from None
    except ValueError as e:
        raise RecipeError([f"{path}: {e}"]) from None
    if not isinstance(raw, dict):
        raise RecipeError([f"{path}: a recipe is a YAML mapping (name: ..., data: ..., ...), not "
                           f"{_yaml_kind(raw)}"])
    problems = []
    for item in overrides or []:
        try:
            apply_override(raw, item)
        except ValueError as e:
            problems.append(f"{path}: --set {item}: {e}")
    try:
        recipe = Recipe.model_validate(raw, context={"base_dir": path.parent.resolve()})
    except ValidationError as e:
        problems += [f"{path}: {describe_error(err)}" for err in e.errors()]
    if problems:
        raise RecipeError(problems)
    return recipe


def _yaml_kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {'list' if isinstance(value, list) else 'single value'}"


def apply_override(tree: dict, item: str) -> None:
    """Set `a.b.0.c=value` in a nested dict/list tree; `value` is parsed as YAML (so 1e-4, true, [a, b] work)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    parts = key.strip().split(".")
    if len(parts) > MAX_DEPTH:  # the value's own nesting is bounded by parse_yaml
        raise ValueError(f"a path of {len(parts)} fields; recipes nest at most {MAX_DEPTH} levels")
    node: Any = tree
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"{here}: {'.'.join(parts[:i])} is a list of {len(node)}: give an index from 0 to "
                                 f"{len(node) - 1}")
            part = int(part)
        if i == len(parts) - 1:
            node[part] = _parse_value(value)
            return
        child = node.get(part) if isinstance(node, dict) else node[part]
        if child is None:  # absent or null: the override fills it in
            child = node[part] = {}
        elif not isinstance(child, dict | list):
            raise ValueError(f"{here} is a single value ({type(child).__name__}), not a mapping or list, so it has no "
                             f"field {parts[i + 1]!r}")
        node = child


def _parse_value(value: str) -> Any:
    """An override's value as YAML; text that is not YAML stays text, but YAML a recipe refuses (a duplicate key,
    too deep or too large) is an error."""
    try:
        return parse_yaml(value)
    except Refused as e:
        raise ValueError(describe_yaml_error(e, value)) from None
    except yaml.YAMLError:
        return value
