"""Each stage's one typed job, built from the recipe, the run's pins and the upstream stages' outputs. The flow
builds each in one line; the task hands it through; the stage function in ftcore takes `(job, out_dir)`.
"""

from __future__ import annotations

from typing import Literal

from ftcore import tracking
from ftcore.data.clean import CleanJob
from ftcore.data.collect import CollectJob
from ftcore.data.config import DataConfig
from ftcore.data.sources.config import RegisteredSource
from ftcore.data.split import data_prompting
from ftcore.deploy.publish import DeployJob
from ftcore.evaluation.jobs import EvaluateJob
from ftcore.models.init import InitJob
from ftcore.monitor.canaries import question_template
from ftcore.monitor.stage import MonitorJob
from ftcore.outputs import DatasetOutput, DeployOutput, EvalOutput, ModelOutput, TrainOutput
from ftcore.pins import Pins, rival
from ftcore.recipe import Recipe
from ftcore.training.jobs import TrainJob
from ftcore.training.merging import MergeJob


def collect_job(recipe: Recipe, pins: Pins) -> CollectJob:
    return CollectJob(data=pinned_data(recipe.data, pins), sources=pins.sources)


def pinned_data(data: DataConfig, pins: Pins) -> DataConfig:
    """The data section with each registered source read at the version pinned for this run."""
    def pinned(sources: list) -> list:
        return [s.model_copy(update={"model": pins.registered[s.model].uri}) if isinstance(s, RegisteredSource)
                else s for s in sources]

    return data.model_copy(update={"sources": pinned(data.sources), "test_sources": pinned(data.test_sources)})


def clean_job(recipe: Recipe, collected: DatasetOutput) -> CleanJob:
    return CleanJob(collected=collected, data=recipe.data, clean=recipe.clean, balance=recipe.balance)


def init_job(recipe: Recipe, pins: Pins, dataset: DatasetOutput) -> InitJob:
    return InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec, start=pins.start,
                   vision=recipe.train.vision if recipe.spec.sees_images else None)


def train_job(recipe: Recipe, pins: Pins, base: ModelOutput, dataset: DatasetOutput) -> TrainJob:
    return TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec, reward=recipe.reward,
                    reward_model=pins.reward_model, continual=recipe.continual, retained=pins.retained,
                    prompting=data_prompting(recipe.data), merge=merge_job(recipe, pins))


def merge_job(recipe: Recipe, pins: Pins) -> MergeJob | None:
    """A merge: recipe's pinned sources, by task."""
    if recipe.merge is None:
        return None
    return MergeJob(sources={task: pins.registered[uri] for uri, task in recipe.merge.tasks().items()},
                    config=recipe.merge)


def evaluate_job(recipe: Recipe, pins: Pins, base: ModelOutput, trained: TrainOutput, dataset: DatasetOutput,
                 split: Literal["test", "validation"] = "test") -> EvaluateJob:
    """The train section only with cross-validation (which trains folds), so that otherwise a changed train section
    re-runs evaluate only through the model it trained. A search's trials score the validation split. A merge's
    sources are scored beside it (its `start`, the first source, is one of them)."""
    merge = merge_job(recipe, pins)
    return EvaluateJob(base=base, trained=trained, dataset=dataset, evaluate=recipe.evaluate, objective=recipe.spec,
                       title=recipe.name, train=recipe.train if recipe.evaluate.cross_validation else None,
                       reward=recipe.reward, reward_model=pins.reward_model, forgetting=pins.forgetting,
                       start=None if merge else pins.start, champion=rival(pins.champion, trained.content_hash),
                       split=split, sources=merge.sources if merge else {})


def deploy_job(recipe: Recipe, trained: TrainOutput, evaluation: EvalOutput, dataset: DatasetOutput) -> DeployJob:
    """Registered under the recipe's resolved name, on this process's MLflow server (tracking.tracking_uri())."""
    return DeployJob(trained=trained, evaluation=evaluation, deploy=recipe.deploy,
                     registered_model=recipe.registered_model, tracking_uri=tracking.tracking_uri(), dataset=dataset)


def monitor_job(recipe: Recipe, deployed: DeployOutput, dataset: DatasetOutput) -> MonitorJob:
    """Outputs screened as the evaluate stage screens them; canaries asked in the recipe's prompt template."""
    return MonitorJob(deployed=deployed, dataset=dataset, monitor=recipe.monitor,
                      toxicity=recipe.evaluate.safety.toxicity, prompt_template=question_template(recipe.data))
