"""Text bodies into chunks, for files and HTTP responses alike: JSON Lines, CSV and JSON arrays of records.

A malformed record (bad JSON, a CSV row with the wrong number of fields, a JSON value that is not an object) goes to
`Chunk.bad` with its line or record number and the reason, and the rest of the body is still read.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator

import pandas as pd

from ftcore.data.sources import ROW_ID, Chunk

RAW_CHARS = 500  # of a malformed record kept in the quarantine


def bad_row(number: int, raw: str, reason: str) -> dict:
    return {ROW_ID: number, "raw": raw[:RAW_CHARS], "reason": reason}


def frame_of(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records) if records else pd.DataFrame({ROW_ID: pd.Series([], dtype="int64")})


def jsonl_chunks(lines: Iterable[tuple[int, str]], origin: str, batch_rows: int) -> Iterator[Chunk]:
    """`lines` are (line number, text); blank lines are skipped."""
    records, bad = [], []
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(bad_row(line_no, line.rstrip("\r\n"), f"invalid JSON: {e}"))
            continue
        if isinstance(record, dict):
            records.append({**record, ROW_ID: line_no})
        else:
            bad.append(bad_row(line_no, line.rstrip("\r\n"), f"not a JSON object (a {type(record).__name__})"))
        if len(records) >= batch_rows:
            yield Chunk(frame_of(records), origin, bad)
            records, bad = [], []
    if records or bad:
        yield Chunk(frame_of(records), origin, bad)


def csv_chunks(lines: Iterable[str], origin: str, batch_rows: int, delimiter: str = ",",
               quotechar: str | None = '"', header: bool = True) -> Iterator[Chunk]:
    """`lines` keep their line endings (a quoted field may span lines). Without a header the first row fixes the
    width and the columns are named "0", "1", ..."""
    quoting = csv.QUOTE_MINIMAL if quotechar else csv.QUOTE_NONE
    reader = csv.reader(lines, delimiter=delimiter, quotechar=quotechar or '"', quoting=quoting)
    try:
        names = next(reader) if header else None
    except StopIteration:
        return
    except csv.Error as e:
        raise ValueError(f"line 1: cannot read the CSV header ({e})") from None
    rows, line_numbers, bad = [], [], []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.append(bad_row(start, "", f"malformed CSV: {e}"))
            continue
        if not fields:
            continue  # a blank line
        names = names or [str(i) for i in range(len(fields))]
        if len(fields) != len(names):
            bad.append(bad_row(start, delimiter.join(fields), f"{len(fields)} fields, expected {len(names)}"))
            continue
        rows.append(fields)
        line_numbers.append(start)
        if len(rows) >= batch_rows:
            yield _csv_chunk(rows, names, line_numbers, origin, bad)
            rows, line_numbers, bad = [], [], []
    if rows or bad:
        yield _csv_chunk(rows, names or [], line_numbers, origin, bad)


def _csv_chunk(rows: list[list[str]], names: list[str], line_numbers: list[int], origin: str, bad: list) -> Chunk:
    return Chunk(pd.DataFrame(rows, columns=names, dtype=object).assign(**{ROW_ID: line_numbers}), origin, bad)


def record_chunks(records: list, origin: str, batch_rows: int) -> Iterator[Chunk]:
    """A parsed JSON array: each object is a row, numbered from 1; anything else is a malformed record."""
    for start in range(0, len(records), batch_rows):
        rows, bad = [], []
        for number, record in enumerate(records[start:start + batch_rows], start=start + 1):
            if isinstance(record, dict):
                rows.append({**record, ROW_ID: number})
            else:
                bad.append(bad_row(number, json.dumps(record), f"not a JSON object (a {type(record).__name__})"))
        yield Chunk(frame_of(rows), origin, bad)
