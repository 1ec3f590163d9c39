"""Recipes: YAML -> dotted overrides -> typed pydantic models, one per stage section.

Each stage receives only its own section (plus references to upstream outputs), so a change to `evaluate.*`
cannot invalidate the cache of `train`. Every validation problem is reported at once, naming the file, the field
path and what was expected.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from ftcore.alignment.config import RewardConfig
from ftcore.data.balance import check_format
from ftcore.data.config import DEFAULT_STEPS, BalanceConfig, CleanConfig, DataConfig, RuntimeConfig, StepSpec
from ftcore.data.steps import images as image_steps
from ftcore.deploy.config import (
    BeatChampion,
    DeployConfig,
    GateRule,
    KeepSources,
    MaxBias,
    MaxForgetting,
    MaxLatency,
    MaxToxicity,
)
from ftcore.deploy.export import planned_export_problems
from ftcore.errors import DataError, RecipeError
from ftcore.evaluation.config import EvaluateConfig
from ftcore.hashing import hash_obj
from ftcore.models.config import LoraMethod, MethodConfig, ModelConfig
from ftcore.models.peft_methods import can_continue
from ftcore.monitor.config import MonitorConfig
from ftcore.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Objective, ObjectiveName, objectives_where
from ftcore.recipe_merge import merge_problem, with_merge_defaults
from ftcore.recipe_yaml import MAX_DEPTH, Refused, describe_yaml_error, parse_yaml, read_yaml_file
from ftcore.registry import STEPS
from ftcore.schema import MAX_RETRIES, MAX_WAIT_S, Strict, describe_error
from ftcore.training.config import CHAMPION_DATA, ContinualConfig, MergeConfig, TrainConfig
from ftcore.tuning.config import TRIAL_MEASURES, TuneConfig
from ftcore.tuning.space import space_problems

log = logging.getLogger(__name__)


class StagesConfig(Strict):
    retries: int = Field(2, ge=0, le=MAX_RETRIES)
    retry_delay_s: float = Field(2.0, ge=0, le=MAX_WAIT_S, description="first retry delay; doubles on each further "
                                                                        "retry")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    objective: ObjectiveName = Field(
        DEFAULT_OBJECTIVE, description="what the model is trained for (ftcore/objectives.py); `task:`, its old name, "
                                       "is still accepted")
    data: DataConfig
    clean: CleanConfig = CleanConfig()
    balance: BalanceConfig = BalanceConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = LoraMethod()
    reward: RewardConfig | None = Field(None, description="objective rl: what the policy is rewarded for")
    continual: ContinualConfig | None = Field(None, description="replay, regulariser and forgetting (sft, dapt, "
                                                                "multitask)")
    merge: MergeConfig | None = Field(None, description="registered adapters combined instead of trained "
                                                        "(docs/merging.md)")
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    deploy: DeployConfig = DeployConfig()
    monitor: MonitorConfig = MonitorConfig()
    stages: StagesConfig = StagesConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tune: TuneConfig | None = Field(None, description="the search `ftflow tune` runs over this recipe's fields")

    @property
    def registered_model(self) -> str:
        return self.deploy.registered_model or self.name

    @property
    def spec(self) -> Objective:
        """The objective's entry in the table: what applies to it."""
        return OBJECTIVES[self.objective]

    def content_hash(self) -> str:
        return hash_obj(self.model_dump(mode="json", exclude={"tune"}))  # a search's settings train nothing

    @model_validator(mode="before")
    @classmethod
    def _objective_defaults(cls, raw: Any) -> Any:
        """`task:` read as `objective:`; the objective's metrics and gate metric, and image_text data's cleaning
        steps, filled in where the recipe leaves them out."""
        if not isinstance(raw, dict):
            return raw  # validation reports it
        raw = with_merge_defaults(with_default_steps(current_names(raw)))
        objective = OBJECTIVES.get(raw.get("objective", DEFAULT_OBJECTIVE))
        return raw if objective is None else with_default_metrics(raw, objective.metrics)

    @model_validator(mode="after")
    def _sections_fit_the_objective(self) -> Recipe:
        objective = self.spec
        merging = merge_problem(self.merge, objective, self.model, self.method,
                                {"continual": self.continual, "tune": self.tune})
        problem = (merging or data_problem(self, objective)
                   or training_problem(self, objective) or evaluation_problem(self.evaluate, objective))
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _steps_fit_the_format(self) -> Recipe:
        problem = image_steps_problem(self.clean.steps, self.data.format)
        if problem:
            raise ValueError(problem)
        if self.data.format == "image_text" and all(s.step != image_steps.DECODE_CHECK for s in self.clean.steps):
            # A warning, not an error: the recipe's own steps may check the images, or its images be known good.
            log.warning(f"clean.steps: no {image_steps.DECODE_CHECK} for data.format image_text, so an image that "
                        f"does not decode stops training when it is reached; add {{step: {image_steps.DECODE_CHECK}}}")
        return self

    @model_validator(mode="after")
    def _balancing_fits_the_format(self) -> Recipe:
        try:
            check_format(self.balance, self.data.format)
        except DataError as e:
            raise ValueError(str(e)) from None
        return self

    @model_validator(mode="after")
    def _the_adapter_can_be_continued(self) -> Recipe:
        if self.model.start == "adapter" and not can_continue(self.method):
            raise ValueError(f"model.start: adapter continues the champion's adapter, which method {self.method.name} "
                             "cannot (lora, qlora, ia3, loha, lokr and adapter can; dora, prompt learning and full "
                             "cannot); use start: merged")
        return self

    @model_validator(mode="after")
    def _exports_fit_the_method(self) -> Recipe:
        # Known from the recipe alone, so refused here rather than by the deploy stage after training.
        problems = planned_export_problems(self.method, self.deploy.exports)
        if "onnx" in self.deploy.exports and (self.spec.classifies or self.spec.sees_images):
            problems.append(f"onnx: objective {self.objective}'s model is not a causal language model; onnx exports "
                            "those (export merged or int8)")
        if problems:
            raise ValueError("deploy.exports: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _gate_rules_can_be_decided(self) -> Recipe:
        problem = gate_problem(self.deploy.gate, self.evaluate, self.spec, self.continual is not None,
                               self.merge is not None)
        if problem:
            raise ValueError(problem)
        return self


# ---------------------------------------------------------------------------------------------------------------
# Checks across sections: what the objective allows (ftcore/objectives.py)


def with_default_metrics(raw: dict, metrics: tuple[str, ...]) -> dict:
    """The objective's metrics where evaluate.metrics is left out, and its first (or the first metric evaluated)
    as the metric of a beat_champion rule that names none."""
    raw = dict(raw)
    evaluate, deploy = raw.get("evaluate") or {}, raw.get("deploy") or {}
    if isinstance(evaluate, dict) and evaluate.get("metrics") is None:
        raw["evaluate"] = evaluate = {**evaluate, "metrics": list(metrics)}
    if isinstance(deploy, dict) and isinstance(evaluate, dict):
        evaluated = evaluate.get("metrics") or []
        default = metrics[0] if metrics[0] in evaluated else (evaluated[0] if evaluated else metrics[0])
        gate = deploy.get("gate") or [{"rule": "beat_champion"}]
        if isinstance(gate, list):
            gate = [{**rule, "metric": primary_metric(gate, default)} if isinstance(rule, dict) and rule.get("rule")
                    in ("beat_champion", "keep_sources") and rule.get("metric") is None else rule for rule in gate]
        raw["deploy"] = {**deploy, "gate": gate}
    return raw


def primary_metric(gate: list, default: str) -> str:
    """The beat_champion rule's metric (the default of keep_sources'), or `default`."""
    return next((rule["metric"] for rule in gate if isinstance(rule, dict) and rule.get("rule") == "beat_champion"
                 and rule.get("metric") is not None), default)


# image_text data also gets the image checks when the recipe lists no steps of its own (CleanConfig's default list
# cannot: it does not know the format). The images are checked before the text steps run; metadata is stripped
# before drop_duplicates, so copies that differed only in it are one file by then.
IMAGE_TEXT_STEPS = [
    {"step": image_steps.DECODE_CHECK},
    {"step": "drop_placeholder_mismatch"},
    {"step": "filter_image_size", "max_pixels": 4096 * 4096, "action": "resize"},
    {"step": "strip_image_metadata"},
    *({"step": spec.step, **spec.params} for spec in DEFAULT_STEPS),
]


def with_default_steps(raw: dict) -> dict:
    """The image steps where a recipe of data.format image_text gives no clean.steps."""
    data, clean = raw.get("data"), raw.get("clean") or {}
    if not isinstance(data, dict) or data.get("format") != "image_text" or not isinstance(clean, dict) \
            or "steps" in clean:
        return raw
    return {**raw, "clean": {**clean, "steps": IMAGE_TEXT_STEPS}}


def image_steps_problem(steps: list[StepSpec], data_format: str) -> str | None:
    """An image step in a recipe whose data has no images."""
    if data_format == "image_text":
        return None
    for i, spec in enumerate(steps):
        if STEPS.get(spec.step).module == image_steps.__name__:
            return (f"clean.steps.{i} ({spec.step}): image steps apply to data.format image_text, not "
                    f"{data_format!r}; remove it")
    return None


def data_problem(recipe: Recipe, objective: Objective) -> str | None:
    name = objective.name
    if recipe.data.format not in objective.formats:
        return (f"objective {name!r} trains on data.format {' or '.join(map(repr, objective.formats))}, not "
                f"{recipe.data.format!r}")
    tagged = [s.label() for s in recipe.data.all_sources() if s.task is not None]
    if not objective.tagged_sources:
        if recipe.data.tasks or tagged:
            return (f"data.tasks and a source's task: apply to objective "
                    f"{' or '.join(objectives_where('tagged_sources'))}, not {name!r}")
        return None
    untagged = [s.label() for s in recipe.data.all_sources() if s.task is None]
    if not recipe.data.tasks or untagged:
        return (f"objective {name}: every source needs `task:` naming one of data.tasks"
                + (f" (missing on {', '.join(untagged)})" if untagged else ""))
    return None


def training_problem(recipe: Recipe, objective: Objective) -> str | None:
    name, train = objective.name, recipe.train
    if train.packing and not objective.packs:
        return f"train.packing: objective {name} scores one sequence at a time; remove packing"
    if objective.samples_answers != (recipe.reward is not None):
        return (f"reward: objective {name} needs it (what the policy is rewarded for)" if objective.samples_answers
                else f"reward: only objective {' or '.join(objectives_where('samples_answers'))} takes one, not "
                     f"{name!r}")
    for section in ("preference", "rl"):
        if section in train.model_fields_set and objective.train_section != section:
            owners = [o.name for o in OBJECTIVES.values() if o.train_section == section]
            return f"train.{section}: only for objective {' or '.join(owners)}"
    if recipe.continual is not None:
        if not objective.continual:
            return f"continual: for objectives {', '.join(objectives_where('continual'))}, not {name!r}"
        if recipe.continual.data == CHAMPION_DATA and recipe.model.source != "champion":
            return ("continual.data: champion is the dataset of the version the model starts from; set "
                    "model.source: champion, or give a file of general data")
    if objective.samples_answers and train.batch_size % train.rl.num_generations:
        return (f"train.batch_size ({train.batch_size}) must be a multiple of train.rl.num_generations "
                f"({train.rl.num_generations}): each batch holds whole groups of answers to one prompt")
    return None


def evaluation_problem(evaluate: EvaluateConfig, objective: Objective) -> str | None:
    name = objective.name
    unfit = [m for m in evaluate.metrics if m not in objective.metrics]
    if unfit:
        return (f"evaluate.metrics: {', '.join(unfit)} cannot score objective {name!r}; use "
                f"{', '.join(objective.metrics)}")
    references = " and ".join(objectives_where("references"))
    if evaluate.fewshot and not objective.references:
        return (f"evaluate.fewshot: prompting with examples applies to objectives {references}, not {name!r}; "
                "remove it")
    if evaluate.domain_metrics and not objective.references:
        return (f"evaluate.domain_metrics: score generated answers against references (objectives {references}), "
                f"not objective {name!r}")
    if evaluate.cross_validation and not objective.cross_validates:
        return (f"evaluate.cross_validation: for objectives {', '.join(objectives_where('cross_validates'))}, not "
                f"{name!r}")
    if evaluate.forgetting is not None and not objective.continual:
        return f"evaluate.forgetting: for objectives {', '.join(objectives_where('continual'))}, not {name!r}"
    return None


def gate_problem(rules: list[GateRule], evaluate: EvaluateConfig, objective: Objective,
                 continual: bool, merging: bool) -> str | None:
    """The first gate rule that needs something the evaluate stage does not measure for this recipe."""
    scored = [*evaluate.metrics, *evaluate.domain_metric_names]
    answering = ", ".join(objectives_where("answers_prompts"))
    for i, rule in enumerate(rules):
        where = f"deploy.gate.{i} ({rule.rule})"
        match rule:
            case BeatChampion(metric=metric) if metric not in scored:
                return (f"{where}: metric {metric!r} must be one of evaluate.metrics or evaluate.domain_metrics "
                        f"{scored}")
            case MaxForgetting(metric=metric):
                if evaluate.forgetting is None and not continual:
                    return f"{where}: needs a forgetting set: evaluate.forgetting.data (or continual)"
                if metric not in evaluate.metrics:
                    return f"{where}: metric {metric!r} must be one of evaluate.metrics {evaluate.metrics}"
            case MaxToxicity() if not objective.answers_prompts or evaluate.safety.toxicity is None:
                return (f"{where}: needs evaluate.safety.toxicity and an objective whose model answers prompts "
                        f"({answering})")
            case MaxBias() if not objective.answers_prompts or evaluate.safety.bias is None:
                return f"{where}: needs evaluate.safety.bias and an objective whose model answers prompts ({answering})"
            case MaxLatency() if evaluate.latency_probes == 0:
                return f"{where}: needs evaluate.latency_probes > 0"
            case KeepSources(metric=metric):
                if not merging:
                    return f"{where}: compares a merge with its sources; only for a recipe with a merge section"
                if metric not in evaluate.metrics:
                    return f"{where}: metric {metric!r} must be one of evaluate.metrics {evaluate.metrics}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Loading

# A recipe's top-level keys under their old names -> the current ones. In a Prefect codebase a task is something
# else, so the objective is called so; recipes and `--set task=...` written before keep working.
OLD_NAMES = {"task": "objective"}


def current_names(raw: dict) -> dict:
    """The recipe's top-level keys under their current names; ValueError for a key given under both names."""
    for old, new in OLD_NAMES.items():
        if old in raw:
            if new in raw:
                raise ValueError(f"{old}: is the old name of {new}:; give only {new}")
            raw = {(new if key == old else key): value for key, value in raw.items()}
    return raw


def old_names_written(raw: dict, overrides: list[str]) -> dict[str, str]:
    """Current name -> the old name the recipe or an override used for it, so that a problem names what was written."""
    heads = {item.partition("=")[0].strip().partition(".")[0] for item in overrides}
    return {new: old for old, new in OLD_NAMES.items() if old in raw or old in heads}


def as_written(problem: str, written: dict[str, str]) -> str:
    """`objective: ...` as `task: ...` where the recipe said task."""
    head, sep, rest = problem.partition(":")
    return f"{written[head]}{sep}{rest}" if head in written else problem


def current_override(item: str) -> str:
    """`--set task=rl` as `--set objective=rl`."""
    key, sep, value = item.partition("=")
    head, dot, rest = key.strip().partition(".")
    return f"{OLD_NAMES[head]}{dot}{rest}{sep}{value}" if head in OLD_NAMES else item


def search_problems(recipe: Recipe) -> list[str]:
    """What keeps the recipe's `tune:` section from searching this recipe, besides its space (space_problems): a
    goal the recipe does not measure, no validation split to score trials on, a pruner with nothing to read."""
    tune, problems = recipe.tune, []
    measured = [*recipe.evaluate.metrics, *recipe.evaluate.domain_metric_names, *TRIAL_MEASURES]
    problems += [f"tune.objectives.{i}.metric: {goal.metric!r} is not measured for this recipe; use one of "
                 f"{', '.join(measured)}" for i, goal in enumerate(tune.objectives) if goal.metric not in measured]
    if recipe.data.split.validation == 0:  # the test split stays unseen until the best trial's final run
        problems.append("tune: trials are scored on the validation split, and this recipe has none; set "
                        "data.split.validation above 0")
    if tune.pruner == "none":
        return problems
    if len(tune.objectives) > 1:
        problems.append(f"tune.pruner: {tune.pruner} stops trials that fall behind on one objective; with several "
                        "objectives set pruner: none")
    if recipe.train.eval_steps is None:
        problems.append(f"tune.pruner: {tune.pruner} reads the validation loss at each evaluation, and "
                        "train.eval_steps is not set (one evaluation, at the end); set train.eval_steps or pruner: "
                        "none")
    if recipe.train.distributed.enabled:
        problems.append(f"tune.pruner: {tune.pruner} watches training in the flow's process, and train.distributed "
                        "trains in others; set pruner: none")
    return problems


def load_recipe(path: str | Path, overrides: list[str] | None = None, search: bool = False) -> Recipe:
    """Read a recipe file, apply `a.b=value` overrides (values parsed as YAML) and validate it. With `search`, its
    `tune:` section is checked against it too (search_problems, then each value of the space in a recipe of its
    own): a run ignores the section, so a run that changes what the search varies (another method) is no error.

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
    written = old_names_written(raw, overrides or [])
    try:
        raw = current_names(raw)
    except ValueError as e:
        raise RecipeError([f"{path}: {e}"]) from None
    problems = []
    for item in overrides or []:
        try:
            apply_override(raw, current_override(item))
        except ValueError as e:
            problems.append(f"{path}: --set {item}: {e}")
    def validated(tree: dict) -> tuple[Recipe | None, list[str]]:
        try:
            return Recipe.model_validate(tree, context={"base_dir": path.parent.resolve()}), []
        except ValidationError as e:
            return None, [as_written(describe_error(err, Recipe), written) for err in e.errors()]

    recipe, refused = validated(raw)
    problems += [f"{path}: {p}" for p in refused]
    if search and not problems and recipe.tune is not None:
        problems = [f"{path}: {p}" for p in search_problems(recipe)]
    if search and not problems and recipe.tune is not None:  # the space's values, each in a recipe of its own
        untuned = {k: v for k, v in raw.items() if k != "tune"}

        def refused(items: list[str]) -> list[str]:
            tree = copy.deepcopy(untuned)
            for item in items:
                apply_override(tree, item)
            return validated(tree)[1]

        problems = [f"{path}: {p}" for p in space_problems(recipe.tune, refused)]
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
