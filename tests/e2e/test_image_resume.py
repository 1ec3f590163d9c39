"""A vision-language training killed with SIGKILL resumes from its last complete checkpoint and ends where an
uninterrupted run with the same seed ends: the image collator, the projector trained beside the LoRA adapter and the
parts' learning rates all come back from the checkpoint; so do a fully fine-tuned LLaVA's weights, which
save_pretrained writes under other names than the model holds (the Trainer's own resume left its language model as
the run began: ftcore/training/checkpoints.py, restore_renamed_weights)."""

from __future__ import annotations

import signal

import pytest
from pydantic import TypeAdapter

from ftcore.data.clean import clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.jobs import clean_job
from ftcore.models.config import MethodConfig
from ftcore.models.init import InitJob, init_stage
from ftcore.training import train
from ftcore.training.checkpoints import CheckpointStore, checkpoint_root
from ftcore.training.jobs import TrainJob
from tests.e2e.test_train_resume import SCHEDULE, assert_same_training, kill_at_step_10
from tests.ftcore.image_fixtures import write_shapes
from tests.ftcore.test_image_text import shapes_recipe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=[{"name": "lora", "r": 4}, {"name": "full"}], ids=["lora", "full"])
def job(tmp_path_factory, request) -> TrainJob:
    root = tmp_path_factory.mktemp("image-resume")
    recipe = shapes_recipe(write_shapes(root / "data", copies=3), "llava", max_steps=SCHEDULE["max_steps"],
                           save_steps=SCHEDULE["save_steps"], save_total_limit=2, logging_steps=2, eval_steps=8,
                           vision={"projector_lr": 1e-3})
    method = TypeAdapter(MethodConfig).validate_python(request.param)
    dataset = clean_balance_stage(clean_job(recipe, collect_stage(CollectJob(data=recipe.data, sources={}),
                                                                  root / "collected")), root / "clean")
    base = init_stage(InitJob(model=recipe.model, method=method, dataset=dataset, objective=recipe.spec,
                              vision=recipe.train.vision), root / "init")
    return TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec)


def test_a_killed_image_training_resumes_and_ends_as_an_uninterrupted_one(job, tmp_path):
    reference = train.train_stage(job, tmp_path / "reference")
    out_dir, progress = tmp_path / "train", tmp_path / "progress"
    assert kill_at_step_10(job, out_dir, progress, tmp_path / "killed.log") == -signal.SIGKILL
    left = [c.step for c in CheckpointStore(checkpoint_root(out_dir), keep=2).all()]
    assert not out_dir.exists() and left[0] >= 8

    resumed = train.train_stage(job, out_dir)

    assert resumed.metrics["resumed_from_step"] == left[0]
    assert_same_training(resumed, reference)
