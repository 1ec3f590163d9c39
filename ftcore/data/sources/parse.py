"""Text bodies into chunks, for files and HTTP responses alike: JSON Lines, CSV and JSON arrays of records.

A malformed record (bad JSON, a CSV row with the wrong number of fields, a JSON value that is not an object) goes to
`Chunk.bad` with its line or record number, its text and the reason, and the rest of the body is still read.

Rows are never merged or lost: a line ends at \\n, \\r\\n or a lone \\r, and a CSV record may run over several lines
only inside a well-formed quoted field. Every physical line is accounted for (the header, a blank line, a row, a
quarantined record), and the count is checked against the lines read.
"""

from __future__ import annotations

import csv
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import pandas as pd

from ftcore.data.sources import ROW_ID, Chunk

RAW_CHARS = 500  # of a malformed record kept in the quarantine
LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")  # one physical line with its ending


def bad_row(number: int, raw: str, reason: str) -> dict:
    return {ROW_ID: number, "raw": raw.rstrip("\r\n")[:RAW_CHARS], "reason": reason}


def frame_of(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records) if records else pd.DataFrame({ROW_ID: pd.Series([], dtype="int64")})


def text_lines(blocks: Iterable[str]) -> Iterator[str]:
    """The physical lines of text arriving in blocks, endings kept: a line ends at \\n, \\r\\n or a lone \\r (old Mac
    files), never at the other characters str.splitlines() breaks on (U+2028, form feed, ...), which JSON strings and
    CSV fields may hold."""
    rest = ""
    for block in blocks:
        text, end = rest + block, 0
        for match in LINE.finditer(text):
            if match.end() == len(text) and text.endswith("\r"):
                break  # the \n of a \r\n may start the next block
            end = match.end()
            yield match.group()
        rest = text[end:]
    if rest:
        yield rest


def jsonl_chunks(lines: Iterable[tuple[int, str]], origin: str, batch_rows: int) -> Iterator[Chunk]:
    """`lines` are (line number, text); blank lines are skipped."""
    records, bad = [], []
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(bad_row(line_no, line, f"invalid JSON: {e}"))
            continue
        except RecursionError:  # one absurdly nested line must not fail the source
            bad.append(bad_row(line_no, line, "JSON nested too deeply to read"))
            continue
        if isinstance(record, dict):
            records.append({**record, ROW_ID: line_no})
        else:
            bad.append(bad_row(line_no, line, f"not a JSON object (a {type(record).__name__})"))
        if len(records) >= batch_rows:
            yield Chunk(frame_of(records), origin, bad)
            records, bad = [], []
    if records or bad:
        yield Chunk(frame_of(records), origin, bad)


class CsvRecord(NamedTuple):
    line: int  # its first physical line
    text: str  # the lines it was read from, as they are in the file
    lines: int  # how many physical lines it spans
    fields: list[str] | None  # None: malformed, see `problem`
    problem: str = ""


class CsvRecords:
    """CSV records with the physical lines they came from. Quotes are parsed strictly: a quoted field must close,
    followed by a delimiter or the end of the line. A record spanning lines is refused when each of its lines reads
    as a row of `width` (> 1) fields by itself (a stray quote, not a field with line breaks). A refused record's
    first line is quarantined and its other lines are read again, so one bad quote costs one row, not the rest of
    the file. csv's field size limit bounds how many lines a record can hold in memory."""

    def __init__(self, lines: Iterable[tuple[int, str]], delimiter: str, quotechar: str | None):
        self._lines = iter(lines)
        self._again: deque[tuple[int, str]] = deque()  # lines of a refused record, to read again
        self._taken: list[tuple[int, str]] = []  # the lines of the record being read
        self.quoted = quotechar is not None
        self._dialect = {"delimiter": delimiter, "quotechar": quotechar or '"', "strict": True,
                         "quoting": csv.QUOTE_MINIMAL if self.quoted else csv.QUOTE_NONE}
        self.width: int | None = None  # fields a row has, once the header (or the first row) is known

    def __iter__(self) -> Iterator[CsvRecord]:
        taken, reader = self._taken, self._reader()
        accounted = last = 0  # physical lines in the records returned; the last line read
        while True:
            taken.clear()
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                record, reader = self._set_aside_first(f"malformed CSV: {e}{self._span()}{self._hint()}")
            else:
                if len(taken) == 1:
                    record = CsvRecord(taken[0][0], taken[0][1], 1, fields)
                else:
                    record, reader = self._multiline(fields, reader)
            accounted += record.lines
            last = max(last, record.line + record.lines - 1)
            yield record
        if accounted != last:  # every physical line belongs to exactly one record
            raise ValueError(f"{last} lines read but {accounted} accounted for in records; rows would be lost, so "
                             f"the file is refused (report this as a bug)")

    def _reader(self) -> Iterator[list[str]]:
        """A csv reader of the lines to read again, then of the source's next ones."""

        def feed() -> Iterator[str]:
            while self._again:
                line = self._again.popleft()
                self._taken.append(line)
                yield line[1]
            for line in self._lines:
                self._taken.append(line)
                yield line[1]

        return csv.reader(feed(), **self._dialect)

    def _multiline(self, fields: list[str], reader: Iterator[list[str]]) -> tuple[CsvRecord, Iterator[list[str]]]:
        taken, width = self._taken, self.width or len(fields)
        # With one column every line reads as a row: nothing tells a stray quote from a field with line breaks.
        if width > 1 and all(self._fields_alone(text) == width for _, text in taken):
            return self._set_aside_first(f"the quote opened on this line closes on line {taken[-1][0]}, and each "
                                         f"line between reads as a row by itself; they are read as rows"
                                         f"{self._hint()}")
        return CsvRecord(taken[0][0], "".join(text for _, text in taken), len(taken), fields), reader

    def _set_aside_first(self, problem: str) -> tuple[CsvRecord, Iterator[list[str]]]:
        """The record's first line, quarantined, and a new reader that reads its other lines again."""
        (line, text), *rest = self._taken
        self._again.extendleft(reversed(rest))
        return CsvRecord(line, text, 1, None, problem), self._reader()

    def _fields_alone(self, text: str) -> int:
        return len(next(csv.reader([text], delimiter=self._dialect["delimiter"], quoting=csv.QUOTE_NONE), []))

    def _span(self) -> str:
        taken = self._taken
        return f" (in a record running from this line to line {taken[-1][0]})" if len(taken) > 1 else ""

    def _hint(self) -> str:
        return "; if quotes are ordinary characters in this file, set quotechar: null" if self.quoted else ""


def csv_chunks(lines: Iterable[tuple[int, str]], origin: str, batch_rows: int, delimiter: str = ",",
               quotechar: str | None = '"', header: bool = True) -> Iterator[Chunk]:
    """`lines` are (line number, text) with their endings (a quoted field may span lines). Without a header the
    first row fixes the width and the columns are named "0", "1", ...; blank lines are skipped."""
    records = CsvRecords(lines, delimiter, quotechar)
    names: list[str] | None = None
    rows, line_numbers, bad = [], [], []
    for line, text, _, fields, problem in records:
        if fields == []:
            continue  # a blank line
        if names is None and header:
            names = _header(line, fields, problem)
            records.width = len(names)
            continue
        if fields is None:
            bad.append(bad_row(line, text, problem))
            continue
        if names is None:
            names = [str(i) for i in range(len(fields))]
            records.width = len(names)
        if len(fields) != len(names):
            bad.append(bad_row(line, text, f"{len(fields)} fields, expected {len(names)}"))
            continue
        rows.append(fields)
        line_numbers.append(line)
        if len(rows) >= batch_rows:
            yield _csv_chunk(rows, names, line_numbers, origin, bad)
            rows, line_numbers, bad = [], [], []
    if rows or bad:
        yield _csv_chunk(rows, names or [], line_numbers, origin, bad)


def _header(line: int, fields: list[str] | None, problem: str) -> list[str]:
    if fields is None:
        raise ValueError(f"line {line}: cannot read the CSV header ({problem})")
    duplicate = duplicate_name(fields)
    if duplicate:
        raise ValueError(f"line {line}: the header names {duplicate}; give each column its own name")
    return fields


def duplicate_name(names: list[str]) -> str | None:
    """`column 'x' twice (fields 1 and 3)` for the first name used twice, else None. Two columns of one name would
    become one, and which of them a mapping reads would be arbitrary."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            return f"column {name!r} twice (fields {seen[name]} and {position})"
        seen[name] = position
    return None


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
