"""What the export tests share: the demo trained with LoRA on the tiny model, registered from a new run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftcore import tracking, versions
from ftcore.data.split import data_prompting
from ftcore.outputs import TrainOutput
from ftcore.training.jobs import TrainJob
from ftcore.training.train import train_stage
from tests.ftcore.pipeline_fixtures import Prepared, prepare


def trained_lora(root: Path) -> tuple[Prepared, TrainOutput]:
    """The demo on the tiny model, trained with LoRA long enough to answer some test questions exactly (its
    prompting recorded beside the weights, as `ftflow run` trains it)."""
    prepared = prepare(root)
    return prepared, train_stage(TrainJob(base=prepared.base, dataset=prepared.dataset, train=prepared.recipe.train,
                                          prompting=data_prompting(prepared.recipe.data)), root / "train")


def register(model_path: Path, name: str = "exp") -> tuple[str, str]:
    """(run id, version) of `model_path` registered from a new run."""
    run_id = tracking.start_pipeline_run(name, "run", {"name": name}, {})
    return run_id, versions.register_version(run_id, name, model_path, {})


def heldout_rows(lora: tuple[Prepared, TrainOutput]) -> pd.DataFrame:
    return pd.read_parquet(lora[0].dataset.splits["test"])
