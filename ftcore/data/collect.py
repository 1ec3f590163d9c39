"""Collect: read every configured source, map its columns to the canonical format, tag rows with their source.

Rows that cannot be parsed are quarantined with their line number instead of aborting the load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ftcore.config import FORMAT_COLUMNS, DataConfig, SourceConfig
from ftcore.errors import DataError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_bytes
from ftcore.outputs import DatasetOutput

ROW_ID = "source_row"


def collect(cfg: DataConfig, out_dir: Path) -> DatasetOutput:
    columns = FORMAT_COLUMNS[cfg.format]
    frames, bad = [], []
    for source in cfg.sources:
        rows, malformed = read_source(source)
        frames.append(to_canonical(rows, source, columns))
        bad.extend(malformed)
    collected = pd.concat(frames, ignore_index=True)
    if collected.empty:
        raise DataError(f"data.sources: no rows found in {', '.join(str(s.path) for s in cfg.sources)}")
    quarantine = pd.DataFrame(bad, columns=["source", ROW_ID, "raw", "reason"])
    with atomic_dir(out_dir) as tmp:
        collected.to_parquet(tmp / "collected.parquet", index=False)
        quarantine.to_parquet(tmp / "quarantine.parquet", index=False)
    return DatasetOutput(
        path=out_dir,
        content_hash=frame_hash(collected),
        splits={"all": out_dir / "collected.parquet"},
        rows=len(collected),
        metrics={"rows": len(collected), "malformed_rows": len(quarantine), "sources": len(cfg.sources)},
        artifacts={"quarantine": out_dir / "quarantine.parquet"},
    )


def read_source(source: SourceConfig) -> tuple[pd.DataFrame, list[dict]]:
    """Rows of one file, and the malformed rows (with line numbers) that could not be read."""
    path = source.path
    try:
        if source.type == "jsonl":
            return _read_jsonl(path)
        if source.type == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False), []
        if source.type == "json":
            return pd.read_json(path, dtype=False), []
        return pd.read_parquet(path), []
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text at byte {e.start}; re-encode the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read as {source.type}: {e}") from None


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[dict]]:
    records, bad = [], []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append({"source": str(path), ROW_ID: line_no, "raw": line[:500], "reason": f"invalid JSON: {e}"})
                continue
            if not isinstance(record, dict):
                bad.append({"source": str(path), ROW_ID: line_no, "raw": line[:500], "reason": "not a JSON object"})
                continue
            records.append({**record, "__line": line_no})
    frame = pd.DataFrame(records)
    return frame, bad


def to_canonical(rows: pd.DataFrame, source: SourceConfig, columns: list[str]) -> pd.DataFrame:
    """Select and rename the source's columns to the canonical ones; text columns become strings."""
    mapping = {canonical: source.columns.get(canonical, canonical) for canonical in columns}
    missing = [f"{canonical} (from column {col!r})" for canonical, col in mapping.items() if col not in rows.columns]
    if missing and not rows.empty:
        raise DataError(
            f"{source.path}: missing {', '.join(missing)}; available columns: {', '.join(map(str, rows.columns))}. "
            f"Map them with data.sources[].columns, e.g. columns: {{prompt: question, completion: answer}}"
        )
    out = pd.DataFrame({canonical: rows[col].fillna("").astype(str) for canonical, col in mapping.items()}
                       if not rows.empty else {c: pd.Series(dtype=str) for c in columns})
    out["source"] = str(source.path.name)
    out[ROW_ID] = rows["__line"].to_numpy() if "__line" in rows else range(1, len(rows) + 1)
    return out


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a table's values and column names (independent of the Parquet writer's version)."""
    values = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hash_bytes(",".join(map(str, frame.columns)).encode() + values)
