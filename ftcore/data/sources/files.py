"""Local files (CSV/TSV, JSONL, JSON, Parquet; plain or .gz), read a chunk at a time.

Text files are decoded line by line, so an undecodable byte is reported with its line and byte offset, and a
malformed line (bad JSON, a CSV row with the wrong number of fields) goes to the quarantine with its line number
instead of aborting the load. A file that cannot be read (a truncated or corrupt gzip stream, a damaged Parquet
page, a NUL byte in text, JSON nested too deeply, a column name used twice) is a DataError naming the file and,
where known, the line or row: it fails the same way every time, so it is not retried.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import FileSource
from ftcore.data.sources.parse import csv_chunks, duplicate_name, jsonl_chunks, record_chunks, text_lines
from ftcore.errors import DataError, first_line

SAMPLE_BYTES = 1 << 16  # what encoding detection looks at; also the block size of UTF-16/32 decoding
BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]
WIDE_CODECS = ("utf-16", "utf-32")  # line endings take more than one byte: split lines after decoding
LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # after a \r that ends a line by itself
GZIP_DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile)  # what a truncated or corrupt gzip stream raises on read
# Files that are not text, though a text reader was asked to read them: the first bytes tell.
CONTAINERS = [(b"\x1f\x8b", "is gzip-compressed; give it a .gz suffix (e.g. data.jsonl.gz) to read it decompressed"),
              (b"PAR1", "is a Parquet file; set type: parquet"),
              (b"PK\x03\x04", "is a ZIP archive (an .xlsx workbook?); export the sheet as CSV")]


def read_files(source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    for path in source.files():
        reader = {"jsonl": _read_jsonl, "csv": _read_csv, "json": _read_json, "parquet": _read_parquet}[source.type]
        for chunk in reader(path, source, batch_rows):
            chunk.folder = path.parent  # image paths in a file are relative to the file
            yield chunk


@contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed for .gz, after checking that it is not a binary container. Gzip damage met
    outside a line (the header, the encoding sample) raises DataError here; decoded_lines adds the line."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            head = f.peek(4)[:4]
            for magic, problem in CONTAINERS:
                if head.startswith(magic):
                    raise DataError(f"{path}: the file {problem}")
            yield f
    except GZIP_DAMAGE as e:
        raise _gzip_damage(path, e) from None


def _gzip_damage(path: Path, error: Exception, line: int | None = None) -> DataError:
    where = f"{path}: line {line}" if line else str(path)
    what = "the gzip stream ends early (the file is truncated)" if isinstance(error, EOFError) else \
        f"not a valid gzip file ({first_line(error)})"
    return DataError(f"{where}: {what}; copy or export the file again")


def detect_encoding(path: Path, configured: str) -> str:
    """The configured codec, or for `auto`: a byte-order mark; else UTF-16 when every other byte is NUL; else UTF-8
    when the sample is UTF-8 (or is UTF-8 up to a broken byte, which is then reported with its line); else
    charset-normalizer's best guess (latin-1, cp1252, ...)."""
    if configured != "auto":
        return configured
    with _open_binary(path) as f:
        sample = _sample(f)
    for bom, codec in BOMS:
        if sample.startswith(bom):
            return codec
    wide = _utf16_without_bom(sample)
    if wide:
        return wide
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


def _sample(f: BinaryIO) -> bytes:
    """The first SAMPLE_BYTES, or what comes before gzip damage: decoded_lines then reports the damage with its
    line."""
    sample = b""
    try:
        while len(sample) < SAMPLE_BYTES and (part := f.read(SAMPLE_BYTES // 16)):
            sample += part
    except GZIP_DAMAGE:
        pass
    return sample


def _utf16_without_bom(sample: bytes) -> str | None:
    """utf-16-le or -be for text in UTF-16 without a byte-order mark: mostly Latin characters make the high byte of
    most code units NUL, and a text file holds no NUL otherwise. (Read as UTF-8, it would be valid and wrong.)"""
    low_first, high_first = sample[0::2], sample[1::2]
    if len(high_first) < 2:
        return None
    for codec, highs, lows in (("utf-16-le", high_first, low_first), ("utf-16-be", low_first, high_first)):
        if highs.count(0) >= len(highs) / 2 and lows.count(0) <= len(lows) / 100:
            return codec
    return None


def decoded_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for every physical line (a line ends at \\n, \\r\\n or a lone \\r), endings kept. An
    undecodable byte, a NUL byte or a damaged gzip stream raises DataError with the line."""
    codec = detect_encoding(path, encoding)
    split = _wide_lines if codecs.lookup(codec).name.startswith(WIDE_CODECS) else _narrow_lines
    line_no = 0
    with _open_binary(path) as f:
        try:
            for line_no, text in split(f, path, codec, encoding):
                if "\x00" in text:
                    raise _nul_byte(path, f"line {line_no}, character {text.index(chr(0)) + 1}")
                yield line_no, text
        except GZIP_DAMAGE as e:
            raise _gzip_damage(path, e, line_no + 1) from None


def _narrow_lines(f: BinaryIO, path: Path, codec: str, encoding: str) -> Iterator[tuple[int, str]]:
    """Codecs in which \\r and \\n are single bytes: split the bytes, then decode each line, so that a bad byte is
    reported with its byte offset."""
    line_no, offset = 0, 0
    for raw in f:
        for piece in LONE_CR.split(raw) if b"\r" in raw else (raw,):
            if not piece:  # what split leaves after a final lone \r
                continue
            line_no += 1
            try:
                yield line_no, piece.decode(codec)
            except UnicodeDecodeError as e:
                if b"\x00" in piece:  # binary data: no encoding to suggest
                    raise _nul_byte(path, f"line {line_no}, byte offset {offset + piece.index(0)}") from None
                raise DataError(f"{path}: line {line_no}, byte offset {offset + e.start}: not {codec} "
                                f"({piece[e.start:e.start + 4]!r}); {_encoding_hint(encoding)}") from None
            offset += len(piece)


def _wide_lines(f: BinaryIO, path: Path, codec: str, encoding: str) -> Iterator[tuple[int, str]]:
    """UTF-16 and UTF-32, whose line endings are several bytes: decode blocks, then split the text into lines."""
    decoder = codecs.getincrementaldecoder(codec)()

    def blocks() -> Iterator[str]:
        while block := f.read(SAMPLE_BYTES):
            yield decoder.decode(block)
        yield decoder.decode(b"", final=True)

    line_no = 0
    try:
        for line_no, text in enumerate(text_lines(blocks()), start=1):
            yield line_no, text
    except UnicodeDecodeError as e:
        hint = "the file is damaged or cut short: export it again" if encoding == "auto" else _encoding_hint(encoding)
        raise DataError(f"{path}: line {line_no + 1}: not {codec} ({e.reason}); {hint}") from None


def _nul_byte(path: Path, where: str) -> DataError:
    return DataError(f"{path}: {where}: a NUL byte; the file is binary or damaged, or UTF-16/UTF-32 without a "
                     f"byte-order mark (then set encoding: utf-16-le, utf-16-be, ...)")


def _encoding_hint(encoding: str) -> str:
    return "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)" if encoding == "auto" else \
        f"check the source's encoding ({encoding!r}), or set encoding: auto"


def _read_jsonl(path: Path, source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    yield from jsonl_chunks(decoded_lines(path, source.encoding), path.name, batch_rows)


def _read_csv(path: Path, source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    try:
        yield from csv_chunks(decoded_lines(path, source.encoding), path.name, batch_rows, source.delimiter,
                              source.quotechar, source.header)
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
    except RecursionError:
        raise DataError(f"{path}: the JSON is nested too deeply to read; write one record per line (type: jsonl), "
                        f"so that such a record is quarantined alone") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records, found a {type(records).__name__}; "
                        f"for one record per line use type: jsonl")
    yield from record_chunks(records, path.name, batch_rows)


def _read_parquet(path: Path, source: FileSource, batch_rows: int) -> Iterator[Chunk]:
    """Batches of rows; the rows read must add up to the row count in the file's metadata."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({first_line(e)})") from None
    duplicate = duplicate_name(parquet.schema_arrow.names)
    if duplicate:
        raise DataError(f"{path}: the schema names {duplicate}; give each column its own name")
    batches, first = parquet.iter_batches(batch_size=batch_rows), 1
    while True:
        try:
            batch = next(batches, None)
            frame = batch.to_pandas() if batch is not None else None
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: rows from {first} on cannot be read ({first_line(e)}); the file is damaged or "
                            f"uses a type pyarrow cannot convert: export it again") from None
        if frame is None:
            break
        frame[ROW_ID] = range(first, first + len(frame))
        first += len(frame)
        yield Chunk(frame, path.name)
    if first - 1 != parquet.metadata.num_rows:
        raise DataError(f"{path}: {first - 1} rows read, but the file's metadata counts {parquet.metadata.num_rows}; "
                        f"the file is damaged: export it again")
