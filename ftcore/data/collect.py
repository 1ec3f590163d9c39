"""Collect: read every configured source, map its columns to the canonical format, tag rows with their source.

Rows that cannot be parsed are quarantined (step `collect`, with the file, line number and reason) instead of
aborting the load; rows in = rows kept + rows quarantined, as in every other step.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pandas as pd

from ftcore.config import FORMAT_COLUMNS, DataConfig, SourceConfig
from ftcore.errors import DataError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_bytes
from ftcore.outputs import DatasetOutput

ROW_ID = "source_row"
COLLECT = "collect"


def collect(cfg: DataConfig, out_dir: Path) -> DatasetOutput:
    columns = FORMAT_COLUMNS[cfg.format]
    frames, bad = [], []
    for source in cfg.sources:
        for path in source.files():
            rows, malformed = read_file(path, source)
            frames.append(to_canonical(rows, path, source, columns))
            bad.extend(malformed)
    collected = pd.concat(frames, ignore_index=True)
    if collected.empty:
        files = ", ".join(str(p) for s in cfg.sources for p in s.files())
        raise DataError(f"data.sources: no rows found in {files}; check the files and their format")
    quarantine = pd.DataFrame(bad, columns=["source", ROW_ID, "raw", "step", "reason"])
    with atomic_dir(out_dir) as tmp:
        collected.to_parquet(tmp / "collected.parquet", index=False)
        quarantine.to_parquet(tmp / "quarantine.parquet", index=False)
    return DatasetOutput(
        path=out_dir,
        content_hash=frame_hash(collected),
        splits={"all": out_dir / "collected.parquet"},
        rows=len(collected),
        metrics={"rows_in": len(collected) + len(quarantine), "rows_kept": len(collected),
                 "rows_quarantined": len(quarantine), "sources": len(cfg.sources)},
        artifacts={"dataset": out_dir / "collected.parquet", "quarantine": out_dir / "quarantine.parquet"},
    )


def read_file(path: Path, source: SourceConfig) -> tuple[pd.DataFrame, list[dict]]:
    """Rows of one file, and the malformed rows (with line numbers) that could not be read."""
    kind = source.type
    data = _read_bytes(path)
    text = _decode_utf8(data, path)
    try:
        if kind == "jsonl":
            return _parse_jsonl(text, path)
        if kind == "csv":
            return _read_csv(text, source), []
        if kind == "json":
            return pd.read_json(io.StringIO(text), dtype=False), []
        return pd.read_parquet(io.BytesIO(data)), []
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read as {kind}: {str(e).splitlines()[0]}") from None


def _read_csv(text: str, source: SourceConfig) -> pd.DataFrame:
    frame = pd.read_csv(
        io.StringIO(text), dtype=str, keep_default_na=False, sep=source.delimiter,
        header=0 if source.header else None, quoting=csv.QUOTE_MINIMAL if source.quotechar else csv.QUOTE_NONE,
        quotechar=source.quotechar or '"',
    )
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from None
    return raw


def _decode_utf8(data: bytes, path: Path) -> str:
    """UTF-8 (a BOM is allowed). Parquet is binary, so only a failed decode of a text format is an error."""
    if path.suffix == ".parquet" or data[:4] == b"PAR1":
        return ""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}, byte offset {e.start}: not UTF-8 ({data[e.start:e.start + 4]!r}); "
            f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _parse_jsonl(text: str, path: Path) -> tuple[pd.DataFrame, list[dict]]:
    records, bad = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = None if isinstance(record, dict) else "not a JSON object"
        except json.JSONDecodeError as e:
            problem = f"invalid JSON: {e}"
        if problem:
            bad.append({"source": path.name, ROW_ID: line_no, "raw": line[:500], "step": COLLECT, "reason": problem})
        else:
            records.append({**record, "__line": line_no})
    return pd.DataFrame(records), bad


def to_canonical(rows: pd.DataFrame, path: Path, source: SourceConfig, columns: list[str]) -> pd.DataFrame:
    """Select and rename the source's columns to the canonical ones; text columns become strings."""
    mapping = {canonical: source.columns.get(canonical, canonical) for canonical in columns}
    missing = [f"{canonical} (from column {col!r})" for canonical, col in mapping.items() if col not in rows.columns]
    if missing and not rows.empty:
        found = ", ".join(str(c) for c in rows.columns if c != "__line")
        raise DataError(
            f"{path}: missing {', '.join(missing)}; columns found: {found}. "
            f"Map them with data.sources[].columns, e.g. columns: {{prompt: question, completion: answer}}"
        )
    out = pd.DataFrame({canonical: rows[col].fillna("").astype(str) for canonical, col in mapping.items()}
                       if not rows.empty else {c: pd.Series(dtype=str) for c in columns})
    out["source"] = path.name
    out[ROW_ID] = rows["__line"].to_numpy() if "__line" in rows else range(1, len(rows) + 1)
    return out


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a table's values and column names (independent of the Parquet writer's version)."""
    values = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hash_bytes(",".join(map(str, frame.columns)).encode() + values)
