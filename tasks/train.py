"""train task: fine-tune the init stage's model."""

from __future__ import annotations

from prefect import get_run_logger

from ftcore.outputs import TrainOutput
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from ftcore.tuning.trial import TrialHook, pruning_reporter
from tasks.common import source_hash, stage_folder, stage_task


def pruning(job: TrainJob, trial: TrialHook | None) -> list:
    """The callback that reports a trial's evaluations to its pruner; none outside a search or without one (and
    with train.distributed, which trains in other processes than this one's callbacks watch)."""
    if trial is None or trial.tune.pruner == "none" or job.train.distributed.enabled:
        return []
    from ftcore.training.callbacks import ReportEvaluations

    return [ReportEvaluations(pruning_reporter(trial))]


def reward_code(job: TrainJob) -> str:
    """The source of the reward functions the recipe uses (data engineers' code) joins the cache key and the
    folder."""
    return source_hash(job.reward.function_modules() if job.reward else set())


@stage_task("train", plugin_code=lambda params: reward_code(params["job"]))
def train(job: TrainJob, mlflow_run_id: str | None = None, trial: TrialHook | None = None) -> TrainOutput:
    """Fine-tune the init stage's model on the train split for the recipe's objective (rl: against the reward, with
    the pinned reward model; continual: replaying and anchored to the retained data). Each step's metrics go to the
    pipeline's MLflow run `mlflow_run_id` as training makes them; a line every tenth of the run goes to the log. In a
    search's `trial`, each evaluation's validation loss goes to the trial's pruner, which may stop training. A merge:
    recipe's sources are combined instead (ftcore/training/merging.py)."""
    out = train_stage(job, stage_folder("train", job, plugins=reward_code(job)), pruning(job, trial),
                      mlflow_run_id=mlflow_run_id)
    m = out.metrics
    if job.merge is not None:
        get_run_logger().info("merged %d adapters (%s) into one of rank %d", m["merged_sources"],
                              job.merge.config.combination, m["merged_rank"])
        return out
    resumed = f" (resumed from step {m['resumed_from_step']:.0f})" if m["resumed_from_step"] else ""
    processes = f" in {m['processes']:.0f} processes ({job.train.distributed.strategy})" if m["processes"] > 1 else ""
    # Online RL's loss is about 0 by construction (rewards minus their group's mean): its progress is the reward.
    progress = (f"sampled answers' reward {m['mean_reward_first']:.3f} -> {m['mean_reward_last']:.3f}, "
                f"{m['groups_scored_alike']:.0%} of prompts' answers all scored alike"
                if "groups_scored_alike" in m else f"loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}")
    get_run_logger().info("trained %d steps%s in %.1f s%s; %s", m["steps"], processes, m["runtime_s"], resumed,
                          progress)
    return out
