"""Local files (CSV/TSV, JSONL, JSON, Parquet; plain or .gz), read a chunk at a time.

Text files are decoded line by line, so an undecodable byte is reported with its line and byte offset, and a
malformed line (bad JSON, a CSV row with the wrong number of fields) goes to the quarantine with its line number
instead of aborting the load.
"""

from __future__ import annotations

import codecs
import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import FileSource
from ftcore.data.sources.parse import csv_chunks, jsonl_chunks, record_chunks
from ftcore.errors import DataError

SAMPLE_BYTES = 1 << 16  # what encoding detection looks at
BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def read_files(source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    for path in source.files():
        reader = {"jsonl": _read_jsonl, "csv": _read_csv, "json": _read_json, "parquet": _read_parquet}[source.type]
        yield from reader(path, source, batch_rows)


@contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
        if isinstance(f, gzip.GzipFile):
            try:
                f.peek(1)
            except (OSError, EOFError) as e:
                raise DataError(f"{path}: not a valid gzip file ({e})") from None
        yield f


def detect_encoding(path: Path, configured: str) -> str:
    """The configured codec, or for `auto`: a byte-order mark; else UTF-8 when the sample is UTF-8 (or is UTF-8 up
    to a broken byte, which is then reported with its line); else charset-normalizer's best guess (latin-1,
    cp1252, ...)."""
    if configured != "auto":
        return configured
    with _open_binary(path) as f:
        sample = f.read(SAMPLE_BYTES)
    for bom, codec in BOMS:
        if sample.startswith(bom):
            return codec
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as e:
        # Non-ASCII bytes before the bad one decoded as UTF-8 sequences: a UTF-8 file with a broken byte.
        # A cut at the end of the sample is a character split by the sample, not a bad byte.
        if e.start >= len(sample) - 3 or any(b >= 0x80 for b in sample[:e.start]):
            return "utf-8"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    return best.encoding if best is not None else "utf-8"


def decoded_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for every line, line endings kept. A byte the codec cannot decode raises DataError with
    the line and the byte offset in the (decompressed) file."""
    codec = detect_encoding(path, encoding)
    if codec == "utf-16":  # two-byte code units: lines cannot be split on b"\n" before decoding
        with _open_binary(path) as f, codecs.getreader(codec)(f) as text:
            yield from enumerate(text, start=1)
        return
    offset = 0
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode(codec)
            except UnicodeDecodeError as e:
                hint = "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)" if encoding == "auto" else \
                    f"check the source's encoding ({encoding!r}), or set encoding: auto"
                raise DataError(f"{path}: line {line_no}, byte offset {offset + e.start}: not {codec} "
                                f"({raw[e.start:e.start + 4]!r}); {hint}") from None
            offset += len(raw)


def _read_jsonl(path: Path, source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    yield from jsonl_chunks(decoded_lines(path, source.encoding), path.name, batch_rows)


def _read_csv(path: Path, source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    lines = (line for _, line in decoded_lines(path, source.encoding))
    try:
        yield from csv_chunks(lines, path.name, batch_rows, source.delimiter, source.quotechar, source.header)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None


def _read_json(path: Path, source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    """A JSON array of records. It is parsed whole (JSON has no record boundaries to stream on): use JSONL for
    large data."""
    text = "".join(line for _, line in decoded_lines(path, source.encoding))
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records, found a {type(records).__name__}; "
                        f"for one record per line use type: jsonl")
    yield from record_chunks(records, path.name, batch_rows)


def _read_parquet(path: Path, source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
    first = 1
    for batch in parquet.iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        frame[ROW_ID] = range(first, first + len(frame))
        first += len(frame)
        yield Chunk(frame, path.name)
