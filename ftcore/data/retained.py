"""The retained data of continual fine-tuning (docs/continual.md): what a retrained model must not forget.

`continual.data: champion` is the dataset the starting version was trained on, fetched from its MLflow run (the
clean_balance stage's `dataset.parquet`, whose `split` column says which rows trained it and which tested it).
A file of general data is templated like the recipe's own rows and split 80/20, seeded. Either way the result is a
`train` part (replayed) and a `test` part (forgetting is measured on it), pinned by content hash before any stage
runs, so the train and evaluate stages that read it are cached on it. `evaluate.forgetting` names a file of general
data held out whole (its `test` part; nothing is replayed), which then measures forgetting instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ftcore import tracking, versions
from ftcore.columns import FORMAT_COLUMNS
from ftcore.data.config import DataConfig
from ftcore.data.split import format_for_model
from ftcore.errors import DataError, UserError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir, hash_file, hash_obj, short
from ftcore.models.registered import ModelRef
from ftcore.paths import home

DATASET_ARTIFACT = "stages/clean_balance/dataset.parquet"
HELD_OUT = 0.2  # the share of a general-data file kept to measure forgetting


class RetainedData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    train: Path
    test: Path
    fingerprint: str
    origin: str  # NAME/VERSION's dataset, or the file

    def cache_identity(self) -> str:
        return self.fingerprint


def champion_data(start: ModelRef) -> RetainedData:
    """The train and test splits of the dataset the version `start` was trained on, fetched once."""
    folder = home() / "registry" / str(start.name) / f"{start.version}-data"
    if not (folder / "test.parquet").is_file():
        dataset = pd.read_parquet(version_dataset(str(start.name), str(start.version), "continual.data: champion"))
        with atomic_dir(folder) as tmp:
            _write_parts(dataset[dataset["split"] == "train"], dataset[dataset["split"] == "test"], tmp)
    return _retained(folder, f"the dataset of {start.label}")


def version_dataset(name: str, version: str, field: str) -> Path:
    """The dataset the registered version NAME/VERSION was trained and tested on (its run's clean_balance
    `dataset.parquet`, whose `split` column names each row's split), fetched once. `field` names the recipe field
    for the error message."""
    folder = home() / "registry" / name / f"{version}-dataset"
    if not (folder / "dataset.parquet").is_file():
        with atomic_dir(folder) as tmp:
            run_id = versions.version_run_id(name, version)
            try:
                (tmp / "download").mkdir()
                downloaded = tracking.download_run_artifact(run_id, DATASET_ARTIFACT, tmp / "download")
            except FileNotFoundError:
                raise UserError(f"{field}: the run {run_id} that registered {name}/{version} has no "
                                f"{DATASET_ARTIFACT}; give a file of its data instead") from None
            downloaded.rename(tmp / "dataset.parquet")
            shutil.rmtree(tmp / "download")
    return folder / "dataset.parquet"


def file_data(path: Path, data: DataConfig, seed: int) -> RetainedData:
    """A file of general data in data.format's columns, templated like the recipe's rows, split 80/20."""
    rows = _templated_rows(path, data, "continual.data", minimum=5).sample(frac=1.0, random_state=seed)
    held_out = max(1, int(len(rows) * HELD_OUT))
    key = hash_obj([hash_file(path), data.format, data.prompt_template, data.completion_template, seed])
    folder = home() / "retained" / short(key)
    with atomic_dir(folder) as tmp:
        _write_parts(rows.iloc[held_out:], rows.iloc[:held_out], tmp)
    return _retained(folder, str(path))


def held_out_data(path: Path, max_rows: int, data: DataConfig) -> RetainedData:
    """evaluate.forgetting: the first `max_rows` rows of a file of general data, templated like the recipe's rows,
    all of them held out (nothing is replayed from it)."""
    rows = _templated_rows(path, data, "evaluate.forgetting.data", minimum=1).iloc[:max_rows]
    key = hash_obj([hash_file(path), data.format, data.prompt_template, data.completion_template, max_rows])
    folder = home() / "held-out" / short(key)
    with atomic_dir(folder) as tmp:
        rows.iloc[0:0].to_parquet(tmp / "train.parquet", index=False)
        rows.to_parquet(tmp / "test.parquet", index=False)
    return _retained(folder, str(path))


def _templated_rows(path: Path, data: DataConfig, field: str, minimum: int) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{field}: {path} not found; give a .jsonl or .parquet file of general data")
    rows = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    missing = [c for c in FORMAT_COLUMNS[data.format] if c not in rows]
    if missing:
        raise DataError(f"{field}: {path} lacks the column(s) {', '.join(missing)} of data.format "
                        f"{data.format} (it has {', '.join(map(str, rows.columns))})")
    if len(rows) < minimum:
        raise DataError(f"{field}: {path} has {len(rows)} rows; at least {minimum} are needed")
    return format_for_model(rows[FORMAT_COLUMNS[data.format]].astype(str), data)


def _write_parts(train: pd.DataFrame, test: pd.DataFrame, folder: Path) -> None:
    if train.empty or test.empty:
        raise DataError(f"continual.data: the retained data has {len(train)} training and {len(test)} test rows; "
                        "both are needed (replay draws on the first, forgetting is measured on the second)")
    train.to_parquet(folder / "train.parquet", index=False)
    test.to_parquet(folder / "test.parquet", index=False)


def _retained(folder: Path, origin: str) -> RetainedData:
    return RetainedData(train=folder / "train.parquet", test=folder / "test.parquet", fingerprint=hash_dir(folder),
                        origin=origin)
