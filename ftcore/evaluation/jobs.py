"""What the evaluate stage takes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ftcore.alignment.config import RewardConfig
from ftcore.data.retained import RetainedData
from ftcore.evaluation.config import EvaluateConfig
from ftcore.models.registered import ModelRef
from ftcore.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Objective
from ftcore.outputs import DatasetOutput, ModelOutput, TrainOutput
from ftcore.training.config import TrainConfig


class EvaluateJob(BaseModel):
    """The evaluate stage's input: the init and train stages' outputs, the cleaned dataset, the evaluate section,
    the objective, the report's title, the train section (only with cross-validation, which trains folds), the
    reward and pinned reward model (rl), the pinned forgetting set, starting version and champion, and the split
    scored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: ModelOutput
    trained: TrainOutput
    dataset: DatasetOutput
    evaluate: EvaluateConfig = EvaluateConfig()
    objective: Objective = OBJECTIVES[DEFAULT_OBJECTIVE]
    title: str = "evaluation"
    train: TrainConfig | None = None
    reward: RewardConfig | None = None
    reward_model: ModelRef | None = None
    forgetting: RetainedData | None = None
    start: ModelRef | None = None
    champion: ModelRef | None = None
    split: Literal["test", "validation"] = "test"  # validation: a search's trial, which must not see the test rows
    sources: dict[str, ModelRef] = {}  # a merge: each source (by task), scored beside the merged adapter
