"""The `finetune` flow: a recipe in, seven cached and retryable stages, one MLflow run, a summary out."""

from __future__ import annotations

import json
import time
from contextlib import closing
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

import ftcore
from flows.options import UNCHANGED, RunOptions, shown_options
from flows.summary import RunSummary, outcomes, run_description
from ftcore import jobs, tracking
from ftcore.deploy.publish import MODEL_HASH_TAG
from ftcore.errors import UserError, is_user_error, storage_error
from ftcore.locks import Lease, abandoned
from ftcore.outputs import DatasetOutput, ModelOutput, StageOutput, TrainOutput
from ftcore.paths import home
from ftcore.pins import Pins, pin
from ftcore.quiet import quiet_libraries
from ftcore.recipe import Recipe, StagesConfig, load_recipe
from ftcore.schema import describe_error
from ftcore.stages import LAST_STAGE, Stage
from ftcore.tuning.trial import Pruned
from tasks.clean_balance import clean_balance
from tasks.collect import collect
from tasks.deploy import deploy
from tasks.evaluate import evaluate
from tasks.init import init
from tasks.monitor import monitor
from tasks.train import train

LEASE_TAG = "ftflow.lease"  # a run's MLflow tag: the file its process holds a lock on while it lives
PREFECT_URL_TAG = "ftflow.prefect_flow_run_url"  # the flow run's page in Prefect's UI, when its server has one
OVERRIDES_TAG = "ftflow.overrides"  # the run's changes to its recipe file (--set, the dashboard form), as JSON


class StopPipeline(Exception):
    """Skips the remaining stages: after the `--until` stage (the run succeeds) or after a failed stage (the summary
    records the failure)."""


class StageFailed(Exception):
    """A stage failed after its retries; the summary has been written and names the stage and the reason."""

    def __init__(self, summary: dict):
        self.summary = summary
        super().__init__(summary["failure"])

    @staticmethod
    def of(summary: dict) -> StageFailed:
        return (UserStageFailed if summary["failure_is_user_error"] else StageFailed)(summary)


class UserStageFailed(StageFailed, UserError):
    """A stage failed on the user's data, recipe or machine: logged without a traceback (flows/settings.py)."""


@flow(name="finetune", log_prints=False, validate_parameters=False)
def finetune(recipe_path: str, overrides: tuple[str, ...] = (), until: Stage = LAST_STAGE,
             options: RunOptions = UNCHANGED) -> State:
    """Run a recipe's seven stages. Calling it returns the run's summary (a dict); the flow run ends Completed, named
    for what its reader must know when the gate kept the champion or the monitor found a breach (end_state).

    Args:
        recipe_path: the recipe YAML, e.g. data_recipes/recipes/clinical_qa.yaml (a path the worker can read).
        overrides: recipe fields to change, as a.b=value (values parsed as YAML), e.g. train.epochs=5.
        until: stop after this stage (the last: run them all).
        options: the recipe's common fields as a form (method, rank, epochs, batch size, learning rate, max steps,
            base model, evaluation, dataset path); a deployment's form shows the recipe's values, and the fields
            changed there become overrides.
    """
    quiet_libraries()  # a worker's flow-run process starts afresh: `ftflow run` quieted its own already
    overrides = [*overrides, *run_options(options)]
    recipe = load_recipe(recipe_path, overrides)
    pins = pin(recipe)  # registered models, retained data and sources, before any stage (ftcore/pins.py)
    summary = start_run(recipe, recipe_path, overrides)
    stages = StageRunner(recipe.stages, summary, until)
    try:
        dataset = prepare_data(stages, recipe, pins)
        base = stages.run(init, job=jobs.init_job(recipe, pins, dataset))
        trained = stages.run(train, job=jobs.train_job(recipe, pins, base, dataset))
        evaluation = stages.run(evaluate, job=jobs.evaluate_job(recipe, pins, base, trained, dataset))
        deployed = stages.run(deploy, job=jobs.deploy_job(recipe, trained, evaluation, dataset),
                              run_tags=version_tags(summary, dataset, trained, lineage(recipe, pins, base)))
        stages.run(monitor, job=jobs.monitor_job(recipe, deployed, dataset))
    except StopPipeline:
        pass
    return end_state(finish_run(summary, stages.outputs))


def prepare_data(stages: StageRunner, recipe: Recipe, pins: Pins) -> DatasetOutput:
    """The collect and clean_balance stages: the dataset the model stages train and score on."""
    collected = stages.run(collect, job=jobs.collect_job(recipe, pins), runtime=recipe.runtime)
    return stages.run(clean_balance, job=jobs.clean_job(recipe, collected), runtime=recipe.runtime)


def end_state(summary: dict) -> State:
    """Completed, carrying the summary; named for the run's first outcome (flows/summary.py: outcomes), e.g. "Gate
    failed" with the message "gate failed: v3 stays challenger", so that a run whose version stayed challenger or
    breached an objective does not read as a plain green Completed in Prefect's UI. Not a failure: both are normal
    outcomes, and a caller (the CLI, chain, retrain) still gets the summary."""
    found = outcomes(summary)
    if not found:
        return Completed(data=summary)
    return Completed(name=found[0].state, message="; ".join(o.message for o in found), data=summary)


def run_options(options: RunOptions | dict | None) -> list[str]:
    """The form's changes as overrides: the fields that differ from what the deployment's form opened with (outside a
    deployment, the fields given). Prefect hands a deployment run's parameters over as JSON, so a dict is checked
    here (the flow validates its own parameters, for one-line errors)."""
    if options is None:
        return []
    try:
        given = RunOptions.model_validate(options)
        shown = shown_options() if given.model_fields_set else None
        return given.overrides(None if shown is None else RunOptions.model_validate(shown))
    except ValidationError as e:
        raise UserError("options: " + "; ".join(describe_error(err, RunOptions) for err in e.errors())) from None


def start_run(recipe: Recipe, recipe_path: str, overrides: list[str], tags: dict[str, str] | None = None,
              title: str | None = None, reopen: str | None = None) -> RunSummary:
    """The run's summary and MLflow run (titled `title`, by default `run_title`, with `tags` besides ftflow's own);
    `reopen`: an MLflow run to go on in (a resumed search's study run) instead of a new one."""
    run_id = str(flow_run.get_id() or f"local-{int(time.time())}")
    recipe_hash = recipe.content_hash()
    end_killed_runs(recipe.name)
    lease = Lease(home() / "runs" / run_id / "lease")  # held while this process lives (ftcore/locks.py)
    prefect_url = prefect_flow_run_url(run_id)
    tags = {"ftflow.recipe_hash": recipe_hash, "ftflow.recipe_path": str(Path(recipe_path).resolve()),
            "ftflow.prefect_flow_run_id": run_id, "ftflow.version": ftcore.__version__,
            LEASE_TAG: str(lease.path), OVERRIDES_TAG: json.dumps(overrides),
            **({PREFECT_URL_TAG: prefect_url} if prefect_url else {}), **(tags or {})}
    if reopen is not None:
        tracking.reopen_run(reopen, tags)
    mlflow_run_id = reopen or tracking.start_pipeline_run(
        experiment=recipe.name, run_name=title or run_title(recipe), recipe=recipe.model_dump(mode="json"), tags=tags)
    run_url = tracking.run_url(mlflow_run_id)
    get_run_logger().info("MLflow run: %s", run_url)
    return RunSummary(run_id=run_id, mlflow_run_id=mlflow_run_id, recipe_hash=recipe_hash,
                      recipe_path=str(recipe_path), overrides=overrides, lease=lease, mlflow_run_url=run_url)


def run_title(recipe: Recipe) -> str:
    """The MLflow run's name: what ran, e.g. `sft · lora r8 · lr 0.005 · 15 ep` (the recipe's name is the
    experiment's)."""
    method, train = recipe.method, recipe.train
    rank = getattr(method, "r", None)  # the adapters that have a rank
    length = f"{train.max_steps} steps" if train.max_steps else f"{train.epochs:g} ep"
    return " · ".join([recipe.objective, f"{method.name} r{rank}" if rank else method.name,
                       f"lr {train.learning_rate:g}", length])


def prefect_flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in Prefect's UI; None where there is none (Prefect's embedded server serves no UI, and a
    run outside Prefect has no flow run)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=flow_run_id) if flow_run.get_id() else None


def end_killed_runs(experiment: str) -> None:
    """End the recipe's earlier runs whose process died (kill -9, out of memory, a lost machine) without ending
    them: MLflow would show them RUNNING and Prefect Running forever. A run is dead when its lease is free."""
    for run in tracking.running_runs(experiment):
        lease = run["tags"].get(LEASE_TAG)
        if lease is None or not abandoned(Path(lease)):
            continue
        flow_run_id = run["tags"].get("ftflow.prefect_flow_run_id", "")
        reason = f"its process died before the run ended (found by a later run of {experiment})"
        tracking.mark_killed(run["run_id"], reason)
        crashed = crash_flow_run(flow_run_id, reason)
        get_run_logger().warning("run %s (MLflow run %s) was killed: %s; marked KILLED in MLflow%s", flow_run_id,
                                 run["run_id"], reason, " and Crashed in Prefect" if crashed else "")


def crash_flow_run(flow_run_id: str, reason: str) -> bool:
    """Set a dead run's Prefect flow run Crashed; False when this Prefect server does not know it (another server,
    or a run outside Prefect) or it has ended already."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            found = client.read_flow_run(UUID(flow_run_id))
            if found.state is not None and found.state.is_final():
                return False
            client.set_flow_run_state(found.id, Crashed(message=reason), force=True)
    except (ValueError, ObjectNotFound):
        return False
    return True


def finish_run(summary: RunSummary, outputs: dict[str, StageOutput], say_cached: bool = True) -> dict:
    """End the run: its summary written, its MLflow run described and ended (named `(cached)` where nothing ran,
    unless not `say_cached`: a resumed search's study run), its lease released. Raises StageFailed when a stage
    failed."""
    dataset, deployed = outputs.get(Stage.clean_balance), outputs.get(Stage.deploy)
    if dataset is not None:
        summary.dataset_hash = dataset.content_hash
    if deployed is not None:
        summary.model = {"name": deployed.registered_model, "version": deployed.version,
                         "aliases": deployed.aliases, "uri": deployed.uri}
        summary.gate = {"passed": deployed.gate_passed, "reason": deployed.gate_reason, "rules": deployed.gate_rules}
        summary.model_version_url = tracking.version_url(deployed.registered_model, deployed.version)
    if (monitored := outputs.get(Stage.monitor)) is not None:
        summary.breaches = list(monitored.breaches)
    # The summary first: on a full disk it is what is written where possible. The lease goes however this ends: a
    # run still RUNNING after it is one that died, for the next run to end.
    with closing(summary.lease):
        try:
            summary.write()
        finally:
            if dataset is not None:
                tracking.set_run_tags(summary.mlflow_run_id, {"ftflow.dataset_hash": dataset.content_hash})
            tracking.describe_run(summary.mlflow_run_id, run_description(summary.to_dict()))
            if say_cached and outputs and all(entry["status"] in ("cached", "skipped")
                                              for entry in summary.stages.values()):
                tracking.add_to_run_name(summary.mlflow_run_id, " (cached)")  # nothing ran: say so in the list
            tracking.end_pipeline_run(summary.mlflow_run_id, summary.succeeded)
    result = summary.to_dict()
    if not summary.succeeded:
        raise StageFailed.of(result)
    publish_links(result)
    return result


def publish_links(summary: dict) -> None:
    """The run's trail from Prefect to MLflow: a log line and a markdown artifact linking the MLflow run, the
    registered version and the evaluation report, through MLflow's UI (not paths on the worker's disk)."""
    links = {"MLflow run": summary["mlflow_run_url"], "Registered version": summary["model_version_url"]}
    evaluated = summary["stages"][Stage.evaluate]
    if evaluated["status"] == "completed":  # a cached one's report is in the run that made it
        report = tracking.stage_artifact(Stage.evaluate, evaluated["artifacts"]["report"])
        links["Evaluation report"] = tracking.run_url(summary["mlflow_run_id"], report)
    lines = [f"- [{label}]({url})" for label, url in links.items() if url]
    lines += [f"- **{o.message}**" for o in outcomes(summary)]
    if summary["model"]:
        get_run_logger().info("registered version: %s", summary["model_version_url"])
    create_markdown_artifact("\n".join(lines), key="mlflow-links", description="this run in MLflow")


def version_tags(summary: RunSummary, dataset: DatasetOutput, trained: TrainOutput,
                 lineage_tags: dict[str, str]) -> dict[str, str]:
    """The registered version's tags: what made it (the model's content hash among them, so a later run knows when
    its candidate is this version), and its lineage."""
    return {"recipe_hash": summary.recipe_hash, "dataset_hash": dataset.content_hash,
            MODEL_HASH_TAG: trained.content_hash, "git_commit": tracking.git_commit(),
            "ftflow_version": ftcore.__version__, **lineage_tags}


def lineage(recipe: Recipe, pins: Pins, base: ModelOutput) -> dict[str, str]:
    """What the version came from: the version it started from, or the versions merged into it and how, and the
    reward model it was optimised against."""
    tags = {}
    if recipe.merge is not None:
        merge = recipe.merge
        tags["merged_from"] = ", ".join(pins.registered[uri].label for uri in merge.sources)
        tags["merge"] = ", ".join([merge.combination, *([f"density {merge.density:g}"] if merge.density else []),
                                   "weights " + " ".join(f"{w:g}" for w in merge.source_weights)])
    elif base.started_from:
        tags["started_from"] = base.started_from
    if pins.reward_model is not None:
        tags["reward_model"] = pins.reward_model.label
    return tags


class StageRunner:
    """Runs one stage task with the recipe's retries, records its outcome, logs its output to MLflow."""

    def __init__(self, cfg: StagesConfig, summary: RunSummary, until: Stage):
        self.cfg, self.summary, self.until = cfg, summary, until
        self.outputs: dict[str, StageOutput] = {}

    def run(self, stage_task, **params):
        name = stage_task.name
        # Every stage task takes the run (tasks/common.py: recording_run): train logs its steps into it live, deploy
        # registers in it, and each output records it for the runs that take it from the cache.
        params["mlflow_run_id"] = self.summary.mlflow_run_id
        task = stage_task.with_options(
            result_storage=home() / "prefect-results",  # caches belong to this FTFLOW_HOME, not to all of them
            retries=self.cfg.retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=self.cfg.retry_delay_s) if self.cfg.retries else 0,
            retry_condition_fn=_worth_retrying,
        )
        started = time.perf_counter()
        state = task(**params, return_state=True)
        if state.is_completed() and state.name == "Cached" and not state.result().exists():
            # The cache points at an output folder that was deleted: recompute rather than hand on a dangling path.
            state = task.with_options(refresh_cache=True)(**params, return_state=True)
        duration = time.perf_counter() - started
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            if isinstance(error, Pruned):  # a search's pruner stopped the trial: not a failure
                metrics = {"pruned_at_step": error.step, "eval_loss": error.loss}
                self.summary.record(name, "pruned", duration, metrics)
                tracking.log_stage_status(self.summary.mlflow_run_id, name, metrics, "pruned")
                raise StopPipeline
            self.summary.record(name, "failed", duration, error=_describe(error, state),
                                user_error=is_user_error(error))
            raise StopPipeline
        output = self.outputs[name] = state.result()
        cached = state.name == "Cached"
        self.summary.record(name, "cached" if cached else "completed", duration, output.metrics, output.artifacts)
        try:
            tracking.log_stage_output(self.summary.mlflow_run_id, name, output, cached)
        except Exception as e:  # MLflow's store on a full disk: the run stops with its summary, as on a failed stage
            problem = storage_error(e)
            if problem is None:
                raise
            self.summary.record(name, "failed", duration, error=_describe(problem, state), user_error=True)
            raise StopPipeline from None
        if name == self.until.value:
            raise StopPipeline
        return output


def _worth_retrying(task, task_run, state) -> bool:
    """Bad data, a bad recipe or a full disk fails the same way every time, and a pruned trial was stopped on
    purpose: retry only other (possibly transient) errors."""
    error = state.result(raise_on_failure=False)
    return not is_user_error(error) and not isinstance(error, Pruned)


def _describe(error, state) -> str:
    if isinstance(error, BaseException):
        error = storage_error(error) or error  # a full disk deep inside a library: say which path, and the fix
        first_line = str(error).splitlines()[0] if str(error) else ""
        return f"{type(error).__name__}: {first_line}"
    return state.message or state.name


__all__ = ["StageFailed", "UserStageFailed", "finetune", "prepare_data", "start_run"]
