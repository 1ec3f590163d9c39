"""Clean/balance: run the recipe's cleaning steps in order over batches of rows, quarantine what they drop (with
the step and reason), write the deterministic train/validation/test split, and balance the train split.

Rows flow as Parquet parts of at most `batch_rows` rows, so memory is bounded by the batch, not the dataset. The
steps are planned as segments: consecutive steps that judge each row on its own run on every part independently
(through `map_parts`, which may be a Dask cluster), and a stateful step (deduplication) sees the parts in order in
this process. Invariant, checked for every step of every part: rows in = rows kept + rows quarantined.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from ftcore.columns import IMAGES_COLUMN, TEXT_COLUMNS
from ftcore.data.balance import balance_rows, with_features
from ftcore.data.card import collect_card_stats, render_data_card, write_thumbnails
from ftcore.data.config import BalanceConfig, CleanConfig, DataConfig, StepSpec
from ftcore.data.formats import HOLDOUT, TASK
from ftcore.data.images import IMAGES_DIR, image_names, store_of
from ftcore.data.sources.config import FileSource
from ftcore.data.split import SPLITS, assign_splits, check_classes, format_for_model, mix_tasks
from ftcore.errors import DataError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_obj
from ftcore.outputs import DatasetOutput
from ftcore.parquet_io import ParquetSink, frame_hash, iter_frames, num_rows, read_column
from ftcore.registry import STEPS, Batch

MapParts = Callable[[Callable[[Path], "PartResult"], list[Path]], Iterable["PartResult"]]
CARD_DIR = "card"  # the data card's thumbnails, beside data_card.md


@dataclass(frozen=True)
class PlannedStep:
    index: int  # position in clean.steps, for messages
    label: str  # metric prefix: the step's name, `<name>_2` the second time it is used
    name: str
    params: dict[str, Any]
    stateful: bool


@dataclass(frozen=True)
class PartResult:
    kept: Path
    quarantined: Path | None
    counts: dict[str, tuple[int, int, int]]  # step label -> (rows in, kept, quarantined)


class CleanJob(BaseModel):
    """The clean/balance stage's job: the collected rows (which count by their content) and the recipe's data,
    clean and balance sections."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    collected: DatasetOutput
    data: DataConfig
    clean: CleanConfig
    balance: BalanceConfig


def clean_balance_stage(job: CleanJob, out_dir: Path, batch_rows: int = 10_000,
                        map_parts: MapParts = map) -> DatasetOutput:
    collected, clean, balance, data = job.collected, job.clean, job.balance, job.data
    text_columns = TEXT_COLUMNS[data.format]
    with atomic_dir(out_dir) as tmp:
        images = link_images(store_of(collected.splits["all"]), tmp / IMAGES_DIR) if data.format == "image_text" \
            else None
        kept_parts, quarantine_parts, step_metrics = clean_in_parts(
            collected.splits["all"], plan_steps(clean.steps), text_columns, tmp / "work", batch_rows, map_parts,
            images)
        rows_kept = sum(num_rows(p) for p in kept_parts)
        if rows_kept < 3:
            raise DataError(f"clean: only {rows_kept} rows survived cleaning; at least 3 are needed to split")
        splits = write_splits(kept_parts, data, balance, tmp)
        rows_quarantined = _concat(quarantine_parts, tmp / "quarantine.parquet", batch_rows)
        shutil.rmtree(tmp / "work")
        _concat([tmp / f"{name}.parquet" for name in SPLITS], tmp / "dataset.parquet", batch_rows, tag_split=True)
        metrics = {
            "rows_in": collected.rows, "rows_kept": rows_kept, "rows_quarantined": rows_quarantined,
            **step_metrics, **splits.balance_metrics, **{f"rows_{name}": n for name, n in splits.rows.items()},
        }
        if metrics["rows_in"] != rows_kept + rows_quarantined:
            raise DataError(f"clean: {metrics['rows_in']} rows in but {rows_kept} kept + {rows_quarantined} "
                            f"quarantined; a step lost or invented rows")
        written = [tmp / f"{name}.parquet" for name in SPLITS]
        pruned = prune_images(images, [*written, tmp / "quarantine.parquet"], batch_rows) if images else 0
        stats = collect_card_stats(dict(zip(SPLITS, written, strict=True)), tmp / "quarantine.parquet", text_columns,
                                   batch_rows, images, pruned)
        card = render_data_card(data_name(data), metrics, collected.metrics, stats,
                                balance.column if balance.strategy != "none" else None)
        (tmp / "data_card.md").write_text(card, encoding="utf-8")
        thumbnails = write_thumbnails(stats, tmp / CARD_DIR)
        if splits.loss is not None:
            (tmp / "loss.json").write_text(json.dumps(splits.loss, indent=1), encoding="utf-8")
    return _cleaned_output(out_dir, splits, rows_kept, metrics, thumbnails)


def _cleaned_output(out_dir: Path, splits: SplitsWritten, rows_kept: int, metrics: dict,
                    thumbnails: list[str]) -> DatasetOutput:
    artifacts = {"dataset": out_dir / "dataset.parquet", "quarantine": out_dir / "quarantine.parquet",
                 "data_card": out_dir / "data_card.md"}
    # Each thumbnail its own artifact: MLflow shows image files, not the card's embedded ones.
    artifacts |= {name.removesuffix(".jpg"): out_dir / CARD_DIR / name for name in thumbnails}
    if splits.loss is not None:
        artifacts["loss"] = out_dir / "loss.json"
    return DatasetOutput(
        path=out_dir,
        content_hash=hash_obj(splits.hashes),
        splits={name: out_dir / f"{name}.parquet" for name in SPLITS},
        rows=rows_kept,
        metrics=metrics,
        artifacts=artifacts,
    )


def data_name(data: DataConfig) -> str:
    """The sources, for the data card's title: file names, and the labels of non-file sources."""
    names = {p.name for p in data.files()} | {s.label() for s in data.all_sources() if not isinstance(s, FileSource)}
    return ", ".join(sorted(names))


# ---------------------------------------------------------------------------------------------------------------
# Cleaning steps over parts


def plan_steps(steps: list[StepSpec]) -> list[PlannedStep]:
    planned, labels = [], set()
    for i, spec in enumerate(steps):
        label, n = spec.step, 1
        while label in labels:
            n += 1
            label = f"{spec.step}_{n}"
        labels.add(label)
        planned.append(PlannedStep(i, label, spec.step, spec.params, STEPS.get(spec.step).stateful))
    return planned


def segments(plan: list[PlannedStep]) -> list[list[PlannedStep]]:
    """Runs of consecutive steps with the same kind: row-by-row steps (parallel over parts) or stateful ones."""
    runs: list[list[PlannedStep]] = []
    for step in plan:
        if runs and runs[-1][0].stateful == step.stateful:
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def link_images(store: Path, into: Path) -> Path:
    """The collected images in this stage's own store, as hard links (no copy) where the file system allows."""
    into.mkdir()
    for image in store.iterdir() if store.is_dir() else ():
        try:
            os.link(image, into / image.name)
        except OSError:
            shutil.copy2(image, into / image.name)
    return into


def prune_images(store: Path, datasets: list[Path], batch_rows: int) -> int:
    """Remove the store's files that no row of `datasets` names (originals a step rewrote, the images of rows
    collect set aside), so the dataset folder holds what its rows name; returns how many."""
    named: set[str] = set()
    for path in datasets:
        if IMAGES_COLUMN in pq.read_schema(path).names:
            for frame in iter_frames(path, batch_rows, [IMAGES_COLUMN]):
                named.update(name for cell in frame[IMAGES_COLUMN] for name in image_names(cell))
    unnamed = [file for file in store.iterdir() if file.name not in named]
    for file in unnamed:
        file.unlink()
    return len(unnamed)


def clean_in_parts(collected: Path, plan: list[PlannedStep], text_columns: list[str], work: Path, batch_rows: int,
                   map_parts: MapParts, images: Path | None = None) -> tuple[list[Path], list[Path], dict[str, float]]:
    """(kept parts in row order, quarantine parts, `<step>.rows_in/rows_kept/rows_quarantined` metrics). `images`:
    the image store the steps read and write."""
    parts = _split_into_parts(collected, work / "in", batch_rows)
    quarantined: list[Path] = []
    counts: dict[str, list[int]] = {step.label: [0, 0, 0] for step in plan}
    for k, segment in enumerate(segments(plan)):
        out = work / f"segment-{k}"
        out.mkdir(parents=True)
        run = partial(clean_part, steps=segment, text_columns=text_columns, out_dir=out, images=images)
        if segment[0].stateful:
            states: dict[str, dict] = {step.label: {} for step in segment}
            results = [run(part, states=states) for part in parts]
        else:
            results = list(map_parts(run, parts))
        for result in results:
            quarantined += [result.quarantined] if result.quarantined else []
            for label, values in result.counts.items():
                counts[label] = [a + b for a, b in zip(counts[label], values, strict=True)]
        parts = [result.kept for result in results]
    metrics = {f"{label}.{name}": float(v) for label, values in counts.items()
               for name, v in zip(("rows_in", "rows_kept", "rows_quarantined"), values, strict=True)}
    return parts, quarantined, metrics


def _split_into_parts(collected: Path, out: Path, batch_rows: int) -> list[Path]:
    out.mkdir(parents=True)
    parts = []
    for i, frame in enumerate(iter_frames(collected, batch_rows)):
        parts.append(out / f"{i:06d}.parquet")
        frame.to_parquet(parts[-1])  # the index (row number in the collected table) travels with the rows
    return parts


def clean_part(part: Path, steps: list[PlannedStep], text_columns: list[str], out_dir: Path,
               states: dict[str, dict] | None = None, images: Path | None = None) -> PartResult:
    """Run `steps` on one part and write what it keeps and quarantines beside it. Module level and given only
    paths and plain data, so a Dask worker can run it."""
    kept, quarantine, counts = apply_steps(pd.read_parquet(part), steps, text_columns, states, images)
    kept_path, quarantine_path = out_dir / part.name, out_dir / f"q-{part.name}"
    kept.to_parquet(kept_path)
    if len(quarantine):
        # `row` is the row number in the collected table, the one a reason such as "duplicate of row 12" names.
        quarantine.rename_axis("row").reset_index().to_parquet(quarantine_path, index=False)
    return PartResult(kept_path, quarantine_path if len(quarantine) else None, counts)


def apply_steps(rows: pd.DataFrame, steps: list[PlannedStep], text_columns: list[str],
                states: dict[str, dict] | None = None, images: Path | None = None,
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Apply each step to the surviving rows, in order. A step that loses or invents rows fails, naming itself."""
    kept, quarantined, counts = rows, [], {}
    for step in steps:
        registered = STEPS.get(step.name)
        params = registered.params.model_validate(step.params)
        _check_named_columns(step, params, kept)
        if kept.empty:  # an earlier step took every row (a part that repeats earlier parts): steps need not cope
            counts[step.label] = (0, 0, 0)
            continue
        state = states.setdefault(step.label, {}) if states is not None else {}
        result = registered.fn(Batch(kept, text_columns, state, images), params)
        if len(result.kept) + len(result.quarantined) != len(kept):
            raise DataError(
                f"clean.steps.{step.index} ({step.name}): returned {len(result.kept)} kept + "
                f"{len(result.quarantined)} quarantined rows for {len(kept)} input rows; a step must account for "
                f"every row")
        quarantined.append(result.quarantined.assign(step=step.label))
        counts[step.label] = (len(kept), len(result.kept), len(result.quarantined))
        kept = result.kept
    empty = rows.iloc[0:0].assign(reason=pd.Series(dtype=str), step=pd.Series(dtype=str))
    return kept, pd.concat([empty, *quarantined]), counts


def run_steps(rows: pd.DataFrame, steps: list[StepSpec], text_columns: list[str], images: Path | None = None):
    """The steps on an in-memory table, as one batch: (kept, quarantine, per-step metrics)."""
    kept, quarantine, counts = apply_steps(rows, plan_steps(steps), text_columns, states={}, images=images)
    metrics = {f"{label}.{name}": v for label, values in counts.items()
               for name, v in zip(("rows_in", "rows_kept", "rows_quarantined"), values, strict=True)}
    return kept.reset_index(drop=True), quarantine.reset_index(drop=True), metrics


def _check_named_columns(step: PlannedStep, params, frame: pd.DataFrame) -> None:
    """By convention a step parameter called `column` or `columns` names data columns: a typo there is the user's
    to fix, so it fails in one line before the step runs rather than as a KeyError inside it."""
    named = list(getattr(params, "columns", None) or [])
    if isinstance(getattr(params, "column", None), str):
        named.append(params.column)
    missing = [c for c in named if c not in frame.columns]
    if missing:
        raise DataError(f"clean.steps.{step.index} ({step.name}): no column {', '.join(map(repr, missing))} in the "
                        f"data; columns: {', '.join(map(str, frame.columns))}")


# ---------------------------------------------------------------------------------------------------------------
# Splits


@dataclass
class SplitsWritten:
    rows: dict[str, int]
    hashes: dict[str, str]
    balance_metrics: dict[str, float]
    loss: dict | None  # what the training loss needs (class weights, focal gamma): written as loss.json


def write_splits(kept_parts: list[Path], data: DataConfig, balance: BalanceConfig, out: Path) -> SplitsWritten:
    """Stream the kept rows into train/validation/test Parquet files, then balance the train split.

    Only the label and holdout columns are read whole (to assign splits); rows move a part at a time. Balancing
    reads the train split into memory, so it is meant for classification-sized data; without it nothing is.
    """
    # Stratified by class, or in a multitask recipe by task, so every task is in every split.
    strata = "label" if data.format == "text_label" else TASK if data.tasks else None
    labels = _concat_column(kept_parts, strata) if strata else None
    holdout = _concat_column(kept_parts, HOLDOUT).to_numpy(dtype=bool)
    groups = _group_column(kept_parts, data.split.group_by) if data.split.group_by else None
    assignment = assign_splits(len(holdout), labels, holdout, data.split, data.test_fraction, groups)
    if data.format == "text_label":
        check_classes(labels, assignment)
    rebalance = needs_balancing(balance) or bool(data.tasks)

    # The train split is balanced before the templates are applied, so resampling and augmentation see raw text.
    def prepare(name: str, rows: pd.DataFrame) -> pd.DataFrame:
        if rebalance and name == "train":
            return rows
        # Validation and test get the features the balanced train split gets (smote's embeddings).
        return format_for_model(with_features(rows, balance), data)

    written = stream_splits(kept_parts, assignment, prepare, out)
    if rebalance:
        rebalance_train(written, data, balance, out)
    return written


def stream_splits(kept_parts: list[Path], assignment, prepare, out: Path) -> SplitsWritten:
    """Each kept part's rows appended to the split `assignment` gives them, as `prepare(split, rows)` makes them."""
    sinks = {name: ParquetSink(out / f"{name}.parquet") for name in SPLITS}
    offset = 0
    for path in kept_parts:
        frame = pd.read_parquet(path).reset_index(drop=True).drop(columns=[HOLDOUT])
        names = assignment[offset: offset + len(frame)]
        offset += len(frame)
        for name, sink in sinks.items():
            if (names == name).any() or (offset == len(assignment) and sink.rows == 0):
                sink.write(prepare(name, frame[names == name]))
    for sink in sinks.values():
        sink.close()
    return SplitsWritten({n: s.rows for n, s in sinks.items()}, {n: s.content_hash for n, s in sinks.items()}, {},
                         None)


def rebalance_train(written: SplitsWritten, data: DataConfig, balance: BalanceConfig, out: Path) -> None:
    """The train split resampled (balance) and mixed by task weight (multitask), then templated, in place."""
    train = pd.read_parquet(out / "train.parquet")
    if needs_balancing(balance):
        result = balance_rows(train, balance, data.format)
        train, written.balance_metrics, written.loss = result.frame, result.metrics, result.loss
    if data.tasks:
        train, mixture = mix_tasks(train, data, data.split.seed)
        written.balance_metrics = {**written.balance_metrics, **mixture}
    train = format_for_model(train, data)
    train.to_parquet(out / "train.parquet", index=False)
    written.rows["train"], written.hashes["train"] = len(train), frame_hash(train)


def needs_balancing(balance: BalanceConfig) -> bool:
    return balance.strategy != "none" or balance.augment.enabled


def _group_column(parts: list[Path], column: str) -> pd.Series:
    if parts and column not in pq.read_schema(parts[0]).names:
        raise DataError(f"data.split.group_by: no column {column!r} in the data; keep it by mapping it in "
                        f"data.sources[].columns (e.g. columns: {{{column}: {column}}})")
    return _concat_column(parts, column)


def _concat_column(parts: list[Path], column: str) -> pd.Series:
    return pd.concat([read_column(p, column) for p in parts], ignore_index=True)


def _concat(parts: list[Path], out: Path, batch_rows: int, tag_split: bool = False) -> int:
    """Stream parts into one Parquet file (the quarantine; the dataset with a `split` column); returns rows.
    Columns only some parts have (the train split's `augmented`) are null in the others."""
    schema = pa.unify_schemas([pq.read_schema(p).remove_metadata() for p in parts]) if parts else None
    if schema is not None and tag_split:
        schema = schema.append(pa.field("split", pa.string()))
    with ParquetSink(out, {"step": "str", "reason": "str"}, schema) as sink:
        for part in parts:
            for frame in iter_frames(part, batch_rows):
                sink.write(frame.assign(split=part.stem) if tag_split else frame)
    return sink.rows
