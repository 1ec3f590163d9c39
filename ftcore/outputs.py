"""What stages hand each other: small, picklable references (folder + content hash + metrics), never models or
data frames. Prefect persists these as task results; the next stage reads the files they point to."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class StageOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    content_hash: str
    metrics: dict[str, float] = {}
    artifacts: dict[str, Path] = {}  # name -> file to show in MLflow / Prefect
    # The MLflow run of the pipeline execution that ran the stage (set by tasks/common.py: stage_task), which holds
    # its artifacts and training history when a later run takes the output from the cache. Not part of
    # cache_identity: the same content made by another run is the same input to the stages after it.
    mlflow_run_id: str | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def cache_identity(self) -> str:
        """What a later stage's cache key and folder hash of this output: its content, not its folder or timings."""
        return self.content_hash


class DatasetOutput(StageOutput):
    """Collected rows (`splits={"all": ...}`) or cleaned splits (`train`, `validation`, `test`), as Parquet."""

    splits: dict[str, Path]
    rows: int


class ModelOutput(StageOutput):
    """A base model folder (weights + tokenizer), and for PEFT methods the initial adapter."""

    base_path: Path
    adapter_path: Path | None = None
    method: str
    classes: list[str] = []  # a sequence classifier's classes in label-id order; empty for a causal LM
    started_from: str | None = None  # source champion: the registered version (NAME/VERSION) it continues


class TrainOutput(StageOutput):
    """The trained weights: `model_path` is a self-contained folder (merged for adapter methods)."""

    model_path: Path
    adapter_path: Path | None = None
    history_path: Path


class EvalOutput(StageOutput):
    predictions_path: Path
    reference: str = "base"  # the scored model the gate compares with when there is no champion
    champion: str | None = None  # NAME/VERSION of the champion scored on this test set as `champion`


class DeployOutput(StageOutput):
    registered_model: str
    version: str
    aliases: list[str]
    uri: str
    gate_passed: bool
    gate_reason: str
    gate_rules: list[dict] = []  # each rule's outcome: rule, passed, value, threshold, reason


class MonitorOutput(StageOutput):
    breaches: list[str]
