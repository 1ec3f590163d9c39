"""Readers: each source type yields its rows in chunks of at most `batch_rows`, so no source is ever held in memory
whole. A chunk keeps the source's own column names; collect maps them to the canonical format afterwards.

Rows a reader cannot parse (a malformed JSONL line, a CSV row with too many fields) are returned in `Chunk.bad`
with their line or record number and a reason, for the quarantine, instead of aborting the load. Problems that make
the whole source unusable (missing file, failing query, HTTP 404) raise DataError naming the source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ftcore.data.sources.config import FileSource, HfDatasetSource, HttpSource, RegisteredSource, Source, SqlSource

ROW_ID = "source_row"  # line number in a text file, record number (from 1) elsewhere


@dataclass
class Chunk:
    rows: pd.DataFrame  # the source's own columns plus ROW_ID
    origin: str  # where these rows came from: a file name, a URL, "sql"
    bad: list[dict] = field(default_factory=list)  # {ROW_ID: int, "raw": str (<= 500 chars), "reason": str}
    folder: Path | None = None  # where relative paths in the rows (image files) are resolved: the file's folder


def read_source(source: Source, batch_rows: int) -> Iterator[Chunk]:
    if isinstance(source, FileSource):
        from ftcore.data.sources.files import read_files

        yield from read_files(source, batch_rows)
    elif isinstance(source, SqlSource):
        from ftcore.data.sources.sql import read_sql

        yield from read_sql(source, batch_rows)
    elif isinstance(source, HttpSource):
        from ftcore.data.sources.http import read_http

        yield from read_http(source, batch_rows)
    elif isinstance(source, HfDatasetSource):
        from ftcore.data.sources.hf import read_hf_dataset

        yield from read_hf_dataset(source, batch_rows)
    elif isinstance(source, RegisteredSource):
        from ftcore.data.sources.registered import read_registered

        yield from read_registered(source, batch_rows)
    else:  # pragma: no cover - the recipe's discriminated union admits nothing else
        raise TypeError(f"unknown source type {type(source).__name__}")
