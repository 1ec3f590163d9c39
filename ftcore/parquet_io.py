"""Streaming Parquet: tables are written and read a batch at a time, so no stage holds a whole dataset in memory,
and content hashes are computed row by row, so they do not depend on how the rows were batched."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def row_hashes(frame: pd.DataFrame) -> bytes:
    """One 64-bit hash per row of the frame's values (lists and dicts hashed through their JSON form)."""
    try:
        hashes = pd.util.hash_pandas_object(frame, index=False)
    except TypeError:
        hashes = pd.util.hash_pandas_object(frame.map(_json_if_nested), index=False)
    return hashes.to_numpy().tobytes()


def _json_if_nested(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, list | dict) else value


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a table's values and column names (independent of the Parquet writer's version)."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(row_hashes(frame))
    return digest.hexdigest()


class ParquetSink:
    """Appends frames to one Parquet file. The first frame fixes the schema; `close()` writes an empty table with
    `columns` when nothing was written, so a reader always finds the file. `content_hash` equals `frame_hash` of
    all rows written, in order."""

    def __init__(self, path: Path, columns: dict[str, str] | None = None, schema: pa.Schema | None = None):
        """`schema` fixes the columns up front (frames lacking some get nulls there); without it, the first
        frame's columns are the table's."""
        self.path, self.columns, self.rows = Path(path), columns or {}, 0
        self.schema = schema
        self._writer: pq.ParquetWriter | None = None
        self._digest: hashlib._Hash | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            # An empty frame's column types are pandas' guesses (an empty text column mapped becomes float64):
            # written as null, which unifies with whatever type the same column has in other files.
            frame = frame.astype(object)
        if self.schema is None:
            self.schema = pa.Table.from_pandas(frame, preserve_index=False).schema
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
            self._digest = hashlib.sha256(",".join(self.schema.names).encode())
        self._writer.write_table(_conform(frame, self.schema))
        self._digest.update(row_hashes(frame.reindex(columns=self.schema.names)))
        self.rows += len(frame)

    @property
    def content_hash(self) -> str:
        return self._digest.hexdigest() if self._digest else frame_hash(self._empty())

    def _empty(self) -> pd.DataFrame:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in self.columns.items()})

    def close(self) -> None:
        if self._writer is None:
            self._empty().to_parquet(self.path, index=False)
        else:
            self._writer.close()

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _conform(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """The frame as a table of `schema`: its columns in order, nulls for those it lacks."""
    present = [name for name in schema.names if name in frame.columns]
    table = pa.Table.from_pandas(frame[present], schema=pa.schema([schema.field(n) for n in present]),
                                 preserve_index=False)
    for name in schema.names:
        if name not in present:
            table = table.append_column(schema.field(name), pa.nulls(len(frame), schema.field(name).type))
    return table.select(schema.names)


def iter_frames(path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The table in frames of at most `batch_rows` rows, indexed by their row number in the whole file."""
    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        offset += len(frame)
        yield frame


def read_column(path: Path, column: str) -> pd.Series:
    """One column of a table (a small read: labels, flags), without loading the others."""
    return pq.read_table(path, columns=[column]).column(column).to_pandas()


def num_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows
