"""Training settings a user can get wrong: a learning rate that makes the run diverge, a distributed set-up this
machine cannot run. Each is one `error:` line naming the field (and the step, for a diverged run), exit 2, not
retried, and nothing trained or registered."""

from __future__ import annotations

import re

import pytest
import torch

from ftcore import tracking
from tests.bad_input.harness import assert_user_error, invoke, published
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _run(capfd, *overrides: str):
    settings = [arg for override in [*TINY_OVERRIDES, "train.epochs=1", *overrides] for arg in ("--set", override)]
    return invoke(["run", DEMO_RECIPE, *settings], capfd)


def test_a_learning_rate_that_makes_the_loss_non_finite_stops_training_at_that_step(capfd, ftflow_home):
    outcome = _run(capfd, "train.learning_rate=1e6", "stages.retries=2")
    error = assert_user_error(
        outcome,
        "stage train failed",
        "train.learning_rate: the training loss is",
        "training diverged",
        "lower train.learning_rate (now 1e+06)",
    )
    assert re.search(r"loss is (nan|inf|-inf) at step \d+:", error), error
    assert "- Retry " not in outcome.stderr  # the same recipe diverges at the same step: no retry
    assert published(ftflow_home, "train") == []
    assert tracking.client().search_registered_models() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU runs these")
@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ("train.distributed.num_processes=2", "train.distributed.backend=nccl"),
            "train.distributed.backend: nccl needs CUDA GPUs and this machine has none; use gloo",
        ),
        (
            ("train.distributed.num_processes=2", "train.distributed.strategy=fsdp"),
            "train.distributed.strategy: fsdp shards over CUDA GPUs and this machine has none; use ddp",
        ),
    ],
)
def test_a_distributed_set_up_this_machine_cannot_run_is_refused_before_the_run(
    capfd, ftflow_home, overrides, fragment
):
    assert_user_error(_run(capfd, *overrides), fragment)
    assert not (ftflow_home / "artifacts").exists()  # refused before any stage ran
