"""The `tune` flow: a search over a recipe's `tune:` space (docs/tune.md).

It reads like what it does: the data stages once (collect and clean_balance, in the study's MLflow run; every trial
takes them from the cache), the trials (each a subflow named after it: init, train with the pruner watching its
validation loss, evaluate on the validation split; each trial a child run of the study's), the study's report, and
the best configuration through the whole pipeline: trained again, scored on the test split the search never saw,
registered through the gate with tags naming the study and the trial.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from flows.finetune import (
    StageFailed,
    StageRunner,
    StopPipeline,
    finetune,
    finish_run,
    prepare_data,
    run_title,
    start_run,
)
from ftcore import jobs, tracking, versions
from ftcore.errors import UserError
from ftcore.paths import home
from ftcore.pins import pin
from ftcore.quiet import quiet_libraries
from ftcore.recipe import Recipe, load_recipe
from ftcore.stages import Stage
from ftcore.tuning.report import study_summary, write_plots
from ftcore.tuning.search import Outcome, Search, Trial, objective_values, study_name
from ftcore.tuning.study import budget_overrides, final_overrides
from ftcore.tuning.trial import TrialHook
from tasks.evaluate import evaluate
from tasks.init import init
from tasks.train import train

STUDY_TAG, TRIAL_TAG, ROLE_TAG = "ftflow.study", "ftflow.trial", "ftflow.role"
TRIAL_STATE_TAG = "ftflow.trial_state"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's UI nests a run under the run this tag names


@flow(name="tune", log_prints=False, validate_parameters=False)
def tune(recipe_path: str, overrides: tuple[str, ...] = (), n_trials: int = 0, timeout_s: float = 0,
         workers: int = 1, join: bool = False, worker: int = 0) -> dict:
    """Search the recipe's `tune:` space and send the best configuration through the pipeline and its gate. Running
    the same search again resumes its study: finished trials are not run again.

    Args:
        recipe_path: the recipe YAML with a `tune:` section, e.g. data_recipes/recipes/clinical_qa.yaml.
        overrides: recipe fields to change, as a.b=value (values parsed as YAML), e.g. train.max_steps=60.
        n_trials: trials in the study (0: the recipe's tune.n_trials); raise it to extend a finished search.
        timeout_s: no new trial starts after this many seconds (0: the recipe's tune.timeout_s).
        workers: processes running trials on this machine, this one included (each trial one at a time).
        join: only run trials of the study, alongside the run that started it (another worker, another machine).
        worker: this worker's number among the study's workers, one of its own for each join run (it seeds the
            sampler apart from the others').
    """
    quiet_libraries()
    overrides = [*overrides, *budget_overrides(n_trials or None, timeout_s or None)]
    recipe = searched_recipe(recipe_path, overrides)
    search = Search(study_name(recipe.name, recipe.content_hash(), recipe.tune), recipe.tune, recipe.train.seed,
                    worker)
    if join:
        run_trials(search, recipe_path, overrides, study_run(recipe, search.name))
        return study_summary(search.study, search.tune)
    summary = start_run(recipe, recipe_path, overrides, {STUDY_TAG: search.name, ROLE_TAG: "study"},
                        title=f"study {search.name}", reopen=study_run(recipe, search.name))
    stages = StageRunner(recipe.stages, summary, until=Stage.clean_balance)
    with suppress(StopPipeline):  # raised after clean_balance, or at a failed stage (the summary says which)
        prepare_data(stages, recipe, pin(recipe))  # once: every trial takes the dataset from the cache
    if summary.succeeded:
        with local_workers(workers - 1, recipe_path, overrides, search.name):
            run_trials(search, recipe_path, overrides, summary.mlflow_run_id)
        # Other workers' trials (a join run elsewhere) end before the study is reported and its best chosen; one
        # whose worker died is queued again, and run here.
        while search.wait_for_running():
            run_trials(search, recipe_path, overrides, summary.mlflow_run_id)
        publish_study(search, summary.mlflow_run_id)
    finish_run(summary, stages.outputs, say_cached=False)  # raises StageFailed when the data stages failed
    result = study_summary(search.study, search.tune)
    if (best := result["best"]) is not None:
        final = [*overrides, *final_overrides(recipe.tune, best["overrides"])]
        result["final"] = run_best(recipe_path, final, search.name, best["number"], summary.mlflow_run_id)
    return result


def searched_recipe(recipe_path: str, overrides: list[str]) -> Recipe:
    recipe = load_recipe(recipe_path, overrides, search=True)
    if recipe.tune is None:
        raise UserError(f"{recipe_path}: has no tune: section to search; add one (docs/tune.md)")
    return recipe


def study_run(recipe: Recipe, study: str) -> str | None:
    """The study's MLflow run, where an earlier start of the search made one."""
    return tracking.tagged_run(recipe.name, {STUDY_TAG: study, ROLE_TAG: "study"})


def run_trials(search: Search, recipe_path: str, overrides: list[str], parent_run: str | None) -> None:
    """Trials until the study's budget is spent, one at a time in this process."""
    logger = get_run_logger()
    while (trial := search.next_trial()) is not None:
        logger.info("trial %d: %s", trial.number, " ".join(trial.overrides))
        outcome = search.run(trial, lambda t: run_trial(t, search, recipe_path, overrides, parent_run))
        if outcome.run_id:
            tracking.set_run_tags(outcome.run_id, {TRIAL_STATE_TAG: outcome.state})
        logger.info("trial %d %s", trial.number, describe(outcome))


def run_trial(trial: Trial, search: Search, recipe_path: str, overrides: list[str],
              parent_run: str | None) -> Outcome:
    """The trial's subflow, and what it measured. A failed trial is recorded with its reason, and the search goes
    on: one configuration that runs out of memory says nothing about the others."""
    named = trial_flow.with_options(flow_run_name=f"{search.name} · trial {trial.number}")
    try:
        summary = named(recipe_path, (*overrides, *trial.overrides), trial.hook, parent_run)
    except StageFailed as failed:
        return Outcome("failed", reason=failed.summary["failure"], run_id=failed.summary["mlflow_run_id"])
    except Exception as e:  # a bug or a resource outside any stage: this trial's failure, not the search's
        return Outcome("failed", reason=f"{type(e).__name__}: {e}")
    trained = summary["stages"][Stage.train]
    if trained["status"] == "pruned":
        return Outcome("pruned", pruned_at=int(trained["metrics"]["pruned_at_step"]), run_id=summary["mlflow_run_id"])
    try:
        values = objective_values(search.tune, summary["stages"])
    except KeyError as e:
        return Outcome("failed", reason=e.args[0], run_id=summary["mlflow_run_id"])
    return Outcome("complete", values, run_id=summary["mlflow_run_id"])


def describe(outcome: Outcome) -> str:
    if outcome.state == "complete":
        return "complete: " + ", ".join(f"{v:.4g}" for v in outcome.values)
    if outcome.state == "pruned":
        return f"pruned at step {outcome.pruned_at}"
    return f"failed: {outcome.reason}"


@flow(name="trial", log_prints=False, validate_parameters=False)
def trial_flow(recipe_path: str, overrides: tuple[str, ...], hook: TrialHook, parent_run: str | None) -> State:
    """One trial of a search: the recipe with the trial's values, trained and scored on the validation split (the
    test split is the final run's). The data stages come from the cache the study filled."""
    recipe = load_recipe(recipe_path, list(overrides))
    pins = pin(recipe)
    tags = {STUDY_TAG: hook.study, TRIAL_TAG: str(hook.number), **({PARENT_TAG: parent_run} if parent_run else {})}
    summary = start_run(recipe, recipe_path, list(overrides), tags, title=f"trial {hook.number} · {run_title(recipe)}")
    stages = StageRunner(recipe.stages, summary, until=Stage.evaluate)
    try:
        dataset = prepare_data(stages, recipe, pins)
        base = stages.run(init, job=jobs.init_job(recipe, pins, dataset))
        trained = stages.run(train, job=jobs.train_job(recipe, pins, base, dataset), trial=hook)
        stages.run(evaluate, job=jobs.evaluate_job(recipe, pins, base, trained, dataset, split="validation"))
    except StopPipeline:
        pass
    result = finish_run(summary, stages.outputs)
    trained = result["stages"][Stage.train]
    if trained["status"] == "pruned":
        return Completed(name="Pruned", message=f"pruned at step {trained['metrics']['pruned_at_step']:.0f}",
                         data=result)
    return Completed(data=result)


def run_best(recipe_path: str, overrides: list[str], study: str, trial: int, parent_run: str) -> dict:
    """The best trial's configuration (`overrides`: study.final_overrides) through the whole pipeline, the normal
    finetune flow: its model (the trial's, or trained again with tune.refit), scored on the test split, registered
    through the gate; its run (a child of the study's) and version then tagged with the study and the trial. A failed
    stage is this run's summary (the search's results stand)."""
    named = finetune.with_options(flow_run_name=f"{study} · best (trial {trial})")
    try:
        summary = named(recipe_path, overrides)
    except StageFailed as failed:
        summary = failed.summary
    chose = {STUDY_TAG: study, TRIAL_TAG: str(trial)}
    tracking.set_run_tags(summary["mlflow_run_id"], {**chose, PARENT_TAG: parent_run})
    if summary["model"]:
        versions.set_version_tags(summary["model"]["name"], summary["model"]["version"], chose)
    return summary


def publish_study(search: Search, run_id: str) -> None:
    """The study's plots and trials table in its MLflow run, and a Prefect artifact linking them."""
    import tempfile

    from prefect.artifacts import create_markdown_artifact

    summary = study_summary(search.study, search.tune)
    names = [goal.metric for goal in search.tune.objectives]
    values = [(name, value, row["number"]) for row in summary["trials"] if row["values"]
              for name, value in zip(names, row["values"], strict=True)]
    best = summary["best"]
    metrics = {**{f"trials_{state}": count for state, count in summary["counts"].items()},
               **({f"best_{name}": v for name, v in zip(names, best["values"], strict=True)} if best else {})}
    with tempfile.TemporaryDirectory() as tmp:
        plots = write_plots(search.study, search.tune, Path(tmp))
        tracking.log_study(run_id, metrics, values, Path(tmp))
    lines = [f"**study {search.name}**: {len(summary['trials'])} trials", "",
             "| trial | state | values | configuration |", "|---|---|---|---|"]
    for row in summary["trials"]:
        values = ", ".join(f"{v:.4g}" for v in row["values"] or [])
        lines.append(f"| {row['number']} | {row['state']} | {values} | {' '.join(row['overrides'])} |")
    # The plots themselves, served by MLflow's UI (`ftflow ui`): shown where the browser reaches it.
    lines += ["", *(f"![{plot.stem}]({tracking.artifact_file_url(run_id, f'study/{plot.name}')})" for plot in plots),
              "", f"[the study's run in MLflow]({tracking.run_url(run_id)})"]
    create_markdown_artifact("\n".join(lines), key="tune-study", description=f"study {search.name}")


@contextmanager
def local_workers(count: int, recipe_path: str, overrides: list[str], study: str) -> Iterator[None]:
    """`count` more processes running the study's trials beside this one (`ftflow tune --join`), each logging to
    $FTFLOW_HOME/tune/STUDY/worker-N.log; waited for at the end of the block. The CPU cores are shared out between
    the processes (share_cores)."""
    if count == 0:
        yield
        return
    folder = home() / "tune" / study
    folder.mkdir(parents=True, exist_ok=True)
    threads = share_cores(count + 1)
    env = {**os.environ, **{variable: str(threads) for variable in THREAD_VARIABLES}}
    started = []
    for number in range(1, count + 1):
        sets = [arg for item in overrides for arg in ("--set", item)]
        log = open(folder / f"worker-{number}.log", "w")  # noqa: SIM115 (the child writes it until it exits)
        command = [sys.executable, "-m", "flows.cli", "tune", recipe_path, *sets, "--join", "--worker", str(number)]
        started.append((number, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        yield
    finally:
        for number, process, log in started:
            if process.wait() != 0:
                get_run_logger().warning("worker %d exited with code %d; see %s", number, process.returncode,
                                         log.name)
            log.close()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def share_cores(workers: int) -> int:
    """Share the CPU cores out between `workers` processes: this process set to its share (at least one thread),
    which is returned for the others. Each PyTorch process takes every core by default; several on the same cores spin
    against each other (measured on 2 cores: a trial took 3 to 8 times the CPU time beside a second worker). A
    thread count the user set (OMP_NUM_THREADS) is kept."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    return threads
