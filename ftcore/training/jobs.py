"""What the train stage takes (TrainJob) and what one training process takes (TrainRun): the stage trains its run
in its own process or, with `train.distributed`, hands it as a file to each process it launches
(ftcore/training/distributed.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ftcore.alignment.config import RewardConfig
from ftcore.data.retained import RetainedData
from ftcore.models.prompting import Prompting
from ftcore.models.registered import ModelRef
from ftcore.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Objective
from ftcore.outputs import DatasetOutput, ModelOutput
from ftcore.training.config import ContinualConfig, TrainConfig
from ftcore.training.merging import MergeJob


class TrainJob(BaseModel):
    """The train stage's input: the init stage's model, the cleaned dataset (its balance stage's loss.json, for a
    classifier, among its artifacts), the train section, the objective and, for objective rl, the reward and the
    pinned reward model; for continual learning the retained data it replays and is anchored to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: ModelOutput
    dataset: DatasetOutput
    train: TrainConfig = TrainConfig()
    objective: Objective = OBJECTIVES[DEFAULT_OBJECTIVE]
    reward: RewardConfig | None = None
    reward_model: ModelRef | None = None
    continual: ContinualConfig | None = None
    retained: RetainedData | None = None
    # How the dataset presents prompts (ftcore/data/split.py: data_prompting), recorded with the trained model so
    # that serving and `ftflow chat` ask it the same way; None records nothing.
    prompting: Prompting | None = None
    merge: MergeJob | None = None  # a merge: recipe: the sources combined instead of training (merging.py)

    def loss_spec(self) -> dict | None:
        """The balance stage's class weights or focal loss (classification), if it wrote one."""
        path = self.dataset.artifacts.get("loss")
        return json.loads(Path(path).read_text()) if path else None


class TrainRun(BaseModel):
    """Everything one training process needs, as settings and files: the job, where the output and the
    checkpoints go, the checkpoint to resume from, the reward model's folder (fetched once, by the stage), and the
    MLflow run to log the steps into."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: TrainJob
    out_dir: Path
    checkpoints: Path
    resume: Path | None = None  # the complete checkpoint to resume from
    resumed_from: int = 0  # its step
    reward_model_dir: Path | None = None
    mlflow_run_id: str | None = None  # the pipeline's run, which the first process logs each step's metrics into


@dataclass(frozen=True)
class TrainerSetup:
    """What a trainer is built from: the model and tokenizer, the rows, the TrainingArguments every trainer shares,
    and the run (the train section, and the objective's own inputs: loss, reward, starting weights)."""

    model: Any
    tokenizer: Any
    train_rows: Any
    eval_rows: Any
    shared: dict
    run: TrainRun

    @property
    def cfg(self) -> TrainConfig:
        return self.run.job.train
