"""Clean/balance: run the recipe's cleaning steps in order, quarantine what they drop (with the step and reason),
write the deterministic train/validation/test split, and balance the train split.

Invariant, checked on every run: rows in = rows kept + rows quarantined.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftcore.config import TEXT_COLUMNS, BalanceConfig, CleanConfig, DataConfig, StepSpec
from ftcore.data.balance import balance_rows
from ftcore.data.card import render_data_card
from ftcore.data.collect import frame_hash
from ftcore.data.split import format_for_model, split_rows
from ftcore.errors import DataError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_obj
from ftcore.outputs import DatasetOutput
from ftcore.registry import Batch, get_step


def clean_and_split(
    collected: DatasetOutput, clean: CleanConfig, balance: BalanceConfig, data: DataConfig, out_dir: Path
) -> DatasetOutput:
    rows = pd.read_parquet(collected.splits["all"])
    kept, quarantine, step_metrics = run_steps(rows, clean.steps, TEXT_COLUMNS[data.format])
    if len(kept) < 3:
        raise DataError(f"clean: only {len(kept)} rows survived cleaning; at least 3 are needed to split")
    splits = split_rows(kept, data.split)
    splits["train"], balance_metrics = balance_rows(splits["train"], balance)
    splits = {name: format_for_model(frame, data) for name, frame in splits.items()}
    metrics = {
        "rows_in": len(rows),
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        **step_metrics,
        **balance_metrics,
        **{f"rows_{name}": len(frame) for name, frame in splits.items()},
    }
    card = render_data_card(data_name(data), metrics, splits, quarantine, TEXT_COLUMNS[data.format],
                            balance.column if balance.strategy != "none" else None)
    with atomic_dir(out_dir) as tmp:
        for name, frame in splits.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        pd.concat([f.assign(split=name) for name, f in splits.items()], ignore_index=True).to_parquet(
            tmp / "dataset.parquet", index=False)
        quarantine.to_parquet(tmp / "quarantine.parquet", index=False)
        (tmp / "data_card.md").write_text(card, encoding="utf-8")
    return DatasetOutput(
        path=out_dir,
        content_hash=hash_obj({name: frame_hash(frame) for name, frame in splits.items()}),
        splits={name: out_dir / f"{name}.parquet" for name in splits},
        rows=len(kept),
        metrics=metrics,
        artifacts={"dataset": out_dir / "dataset.parquet", "quarantine": out_dir / "quarantine.parquet",
                   "data_card": out_dir / "data_card.md"},
    )


def data_name(data: DataConfig) -> str:
    return ", ".join(sorted({p.name for source in data.sources for p in source.files()}))


def run_steps(rows: pd.DataFrame, steps: list[StepSpec], text_columns: list[str]):
    """Apply each step to the surviving rows, in recipe order.

    Returns (kept, quarantine, metrics) with `<step>.rows_in/rows_kept/rows_quarantined` per step (a step used
    twice is `<step>_2` the second time). A step that loses or invents rows fails the stage, naming itself.
    """
    kept, quarantined, metrics = rows, [], {}
    for i, spec in enumerate(steps):
        registered = get_step(spec.step)
        params = registered.params.model_validate(spec.params)
        _check_named_columns(i, spec.step, params, kept)
        before = len(kept)
        result = registered.fn(Batch(kept, text_columns), params)
        if len(result.kept) + len(result.quarantined) != before:
            raise DataError(
                f"clean.steps.{i} ({spec.step}): returned {len(result.kept)} kept + {len(result.quarantined)} "
                f"quarantined rows for {before} input rows; a step must account for every row"
            )
        label = _unique_label(spec.step, metrics)
        quarantined.append(result.quarantined.assign(step=label))
        metrics.update({f"{label}.rows_in": before, f"{label}.rows_kept": len(result.kept),
                        f"{label}.rows_quarantined": len(result.quarantined)})
        kept = result.kept
    empty = rows.iloc[0:0].assign(reason=pd.Series(dtype=str), step=pd.Series(dtype=str))
    quarantine = pd.concat([empty, *quarantined], ignore_index=True)
    assert len(kept) + len(quarantine) == len(rows), "rows in != kept + quarantined"
    return kept.reset_index(drop=True), quarantine, metrics


def _check_named_columns(i: int, step: str, params, frame: pd.DataFrame) -> None:
    """By convention a step parameter called `column` or `columns` names data columns: a typo there is the user's
    to fix, so it fails in one line before the step runs rather than as a KeyError inside it."""
    named = list(getattr(params, "columns", None) or [])
    if isinstance(getattr(params, "column", None), str):
        named.append(params.column)
    missing = [c for c in named if c not in frame.columns]
    if missing:
        raise DataError(f"clean.steps.{i} ({step}): no column {', '.join(map(repr, missing))} in the data; "
                        f"columns: {', '.join(map(str, frame.columns))}")


def _unique_label(step: str, metrics: dict) -> str:
    label, n = step, 1
    while f"{label}.rows_in" in metrics:
        n += 1
        label = f"{step}_{n}"
    return label
