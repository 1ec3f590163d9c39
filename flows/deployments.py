"""The deployments in infra/prefect.yaml: read, checked, and registered with a Prefect server (`ftflow deploy`) or
served from this process (`ftflow serve-flows`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ftcore.errors import UserError
from ftcore.recipe_yaml import read_yaml_file
from ftcore.schema import describe_error

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "infra" / "prefect.yaml"
DEFAULT_POOL = "ftflow-process"


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _prefect_accepts_it(self) -> Schedule:
        """Checked with Prefect's own schedule model now, not when the server is half-way through the deployments."""
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValidationError as e:
            raise ValueError("; ".join(error["msg"].removeprefix("Value error, ") for error in e.errors())) from None
        return self


class WorkPool(BaseModel):
    model_config = ConfigDict(extra="allow")  # prefect.yaml allows job_variables and more

    name: str


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    entrypoint: str = Field(pattern=r"^[\w/.-]+\.py:\w+$")
    description: str | None = None
    parameters: dict[str, Any] = {}
    schedules: list[Schedule] = []
    concurrency_limit: int | None = Field(None, ge=1)
    concurrency_options: dict[str, Any] = {}
    triggers: list[dict[str, Any]] = []  # Prefect's DeploymentEventTrigger fields
    work_pool: WorkPool = WorkPool(name=DEFAULT_POOL)

    @property
    def flow_name(self) -> str:
        return self.entrypoint.rsplit(":", 1)[1]


class PrefectFile(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, prefect-version, build/push/pull steps

    deployments: list[DeploymentSpec]


def load_deployments(path: Path = PREFECT_FILE, crons: dict[str, str] | None = None,
                     recipe: str | None = None) -> list[DeploymentSpec]:
    """The file's deployments; `crons` replaces a deployment's schedule by name, `recipe` its recipe parameter."""
    try:
        raw = read_yaml_file(Path(path))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    try:
        specs = PrefectFile.model_validate(raw).deployments
    except ValidationError as e:
        raise UserError(f"{path}: " + "; ".join(describe_error(err, PrefectFile) for err in e.errors())) from None
    unknown = set(crons or {}) - {s.name for s in specs}
    if unknown:
        raise UserError(f"no deployment named {', '.join(sorted(unknown))} in {path}")
    for spec in specs:
        if spec.name in (crons or {}):
            spec.schedules = [cli_schedule(spec.name, crons[spec.name])]
        if recipe is not None:
            use_recipe(spec, recipe)
    return [with_form(each) for spec in specs for each in per_recipe(spec)]


def cli_schedule(name: str, cron: str) -> Schedule:
    try:
        return Schedule(cron=cron)
    except ValidationError as e:
        raise UserError(f"--{name}-cron: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def use_recipe(spec: DeploymentSpec, recipe: str) -> None:
    """Point the deployment at `recipe`: its recipe parameter, the model the monitor watches, and the model whose
    breach events start the retraining."""
    from ftcore.recipe import load_recipe

    loaded = load_recipe(recipe)
    name = loaded.registered_model
    for key in ("recipe_path", "recipe"):
        if key in spec.parameters:
            if in_repo(spec.parameters[key]).is_dir():  # a deployment per recipe: named after it (per_recipe)
                spec.name = loaded.name
            spec.parameters[key] = recipe
    if "model" in spec.parameters:
        spec.parameters["model"] = f"models:/{name}@champion"
    for trigger in spec.triggers:
        trigger.setdefault("match", {})["prefect.resource.id"] = f"ftflow.model.{name}"
        trigger["name"] = f"retrain {name} on a monitor breach"


def in_repo(path: str) -> Path:
    """A deployment's path parameter as the worker reads it: relative to the repository root."""
    return REPO / path


def per_recipe(spec: DeploymentSpec) -> list[DeploymentSpec]:
    """A deployment whose recipe_path is a folder, once for each recipe in it (sub-folders too), named after the
    recipe: the dashboard lists the repository's recipes, each with its own form."""
    from ftcore.recipe import load_recipe

    path = spec.parameters.get("recipe_path")
    if path is None or not in_repo(path).is_dir():
        return [spec]
    folder = in_repo(path)
    named: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.yaml")):
        name = load_recipe(path).name
        if name in named:
            raise UserError(f"{named[name]} and {path} are both named {name!r}: the deployments of {folder} are named "
                            "after their recipe; rename one")
        named[name] = path
    return [spec.model_copy(deep=True, update={
        "name": name, "parameters": {**spec.parameters, "recipe_path": str(path.relative_to(REPO))}})
        for name, path in named.items()]


def with_form(spec: DeploymentSpec) -> DeploymentSpec:
    """The deployment's form (its `options` parameter) filled in with its recipe's values (flows/options.py): the
    dashboard's Run shows them, and only the fields changed there override the recipe."""
    from flows.options import RunOptions
    from ftcore.recipe import load_recipe

    if "recipe_path" not in spec.parameters or "options" not in flow_of(spec).parameters.properties:
        return spec  # the search's form is its own (n_trials, timeout_s, workers)
    if "options" in spec.parameters:
        raise UserError(f"deployment {spec.name}: parameters.options: the form shows the recipe's own values; give "
                        "fixed changes as parameters.overrides (a.b=value)")
    path = in_repo(spec.parameters["recipe_path"])
    spec.parameters["options"] = RunOptions.of_recipe(load_recipe(path), path).model_dump(mode="json")
    return spec


def flow_of(spec: DeploymentSpec):
    """The flow object behind a deployment's entrypoint (a file of this repository)."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, name = spec.entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{REPO / path}:{name}")


def register(specs: list[DeploymentSpec], work_pool: str | None = None) -> list[str]:
    """Each deployment registered with the Prefect server, on its work pool (created as a process pool when
    missing); returns their ids. Run again, it updates them in place."""
    from prefect import Flow

    ids = []
    for spec in specs:
        pool = work_pool or spec.work_pool.name
        ensure_process_pool(pool)
        source = Flow.from_source(source=str(REPO), entrypoint=spec.entrypoint)
        ids.append(str(source.deploy(
            name=spec.name, work_pool_name=pool, parameters=spec.parameters, description=spec.description,
            schedules=cron_schedules(spec), concurrency_limit=concurrency(spec), triggers=event_triggers(spec),
            build=False, push=False, print_next_steps=False, ignore_warnings=True)))
    return ids


def ensure_process_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def runner_deployments(specs: list[DeploymentSpec]) -> list:
    """The deployments as this process serves them (`prefect.serve`): no work pool, each flow run a subprocess."""
    return [flow_of(spec).to_deployment(
        name=spec.name, parameters=spec.parameters, description=spec.description,
        schedules=cron_schedules(spec), concurrency_limit=concurrency(spec), triggers=event_triggers(spec))
        for spec in specs]


def cron_schedules(spec: DeploymentSpec) -> list | None:
    from prefect.schedules import Cron

    return [Cron(s.cron, timezone=s.timezone) for s in spec.schedules] or None


def concurrency(spec: DeploymentSpec):
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    if spec.concurrency_limit is None:
        return None
    return ConcurrencyLimitConfig(limit=spec.concurrency_limit, **spec.concurrency_options)


def event_triggers(spec: DeploymentSpec) -> list | None:
    from prefect.events import DeploymentEventTrigger

    try:
        return [DeploymentEventTrigger(**trigger) for trigger in spec.triggers] or None
    except ValidationError as e:
        raise UserError(f"deployment {spec.name}: triggers: " + "; ".join(map(describe_error, e.errors()))) from None
