"""Bad data files through `ftflow run --until clean_balance`: a file that cannot be read exits 2 with one `error:` line
naming the file (and the line or rows where known), no traceback and no retry; a file whose faults are tolerated by
design runs, and every row read is kept or quarantined with its line, reason and text."""

from __future__ import annotations

import codecs
import gzip
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftcore.paths import home
from tests.bad_input.harness import Outcome, assert_user_error, invoke, published, write_recipe

pytestmark = pytest.mark.usefixtures("prefect_harness")

QA = [{"prompt": f"What does abbreviation {i} stand for?", "completion": f"It stands for term {i}."}
      for i in range(200)]
CSV_HEADER = "prompt,completion\n"


def _csv_lines(n: int = 40) -> list[str]:
    return [f"{r['prompt']},{r['completion']}" for r in QA[:n]]


def _csv(lines: list[str], ending: str = "\n") -> bytes:
    return (CSV_HEADER.replace("\n", ending) + "".join(line + ending for line in lines)).encode()


def _jsonl(records: list, ending: str = "\n") -> bytes:
    return "".join(json.dumps(r) + ending for r in records).encode()


def _parquet(table: pa.Table | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table if table is not None else pa.Table.from_pylist(QA), buffer, compression="NONE",
                   row_group_size=50)
    return buffer.getvalue()


def _damaged_page() -> bytes:
    data = bytearray(_parquet())
    middle = len(data) // 2
    data[middle:middle + 300] = b"\xff" * 300
    return bytes(data)


def _corrupt_gzip() -> bytes:
    data = bytearray(gzip.compress(_jsonl(QA), mtime=0))
    data[40:80] = b"\xff" * 40
    return bytes(data)


def _with(lines: list[str], **replaced: str) -> list[str]:
    """`lines` with line i (from 0) replaced: _with(lines, i9='...')."""
    lines = list(lines)
    for key, text in replaced.items():
        lines[int(key[1:])] = text
    return lines


@dataclass(frozen=True)
class Refused:
    """A data file that cannot be used, and what the one error line must name."""

    file: str
    content: bytes
    fragments: tuple[str, ...]
    source: dict = field(default_factory=dict)  # more fields of the source entry
    sections: dict = field(default_factory=dict)  # more recipe sections (task)
    stage: str = "collect"  # the stage that fails


LATIN1 = (CSV_HEADER + "Qu'est-ce que la fièvre?,Une température élevée\n").encode("latin-1")
REFUSED = {
    # Compressed and binary containers
    "truncated-gzip": Refused("qa.jsonl.gz", gzip.compress(_jsonl(QA), mtime=0)[:-60],
                              ("qa.jsonl.gz: line ", "the gzip stream ends early (the file is truncated)")),
    "corrupt-gzip": Refused("qa.jsonl.gz", _corrupt_gzip(), ("qa.jsonl.gz", "not a valid gzip file")),
    "gz-name-plain-text": Refused("qa.jsonl.gz", _jsonl(QA[:5]), ("qa.jsonl.gz: not a valid gzip file",)),
    "gzip-without-gz-name": Refused("qa.jsonl", gzip.compress(_jsonl(QA), mtime=0),
                                    ("qa.jsonl: the file is gzip-compressed; give it a .gz suffix",)),
    "xlsx-as-csv": Refused("qa.csv", b"PK\x03\x04\x14\x00\x06\x00" + bytes(200),
                           ("qa.csv: the file is a ZIP archive (an .xlsx workbook?)",)),
    "parquet-as-jsonl": Refused("qa.jsonl", _parquet(), ("qa.jsonl: the file is a Parquet file; set type: parquet",)),
    "binary-garbage": Refused("qa.csv", random.Random(19).randbytes(4096),
                              ("qa.csv: line 1, byte offset ", "a NUL byte; the file is binary or damaged")),
    # Parquet damage
    "parquet-damaged-page": Refused("qa.parquet", _damaged_page(), ("qa.parquet: rows from ", "cannot be read")),
    "parquet-truncated": Refused("qa.parquet", _parquet()[:-100], ("qa.parquet: not a Parquet file",)),
    "parquet-text": Refused("qa.parquet", _csv(_csv_lines()), ("qa.parquet: not a Parquet file",)),
    "parquet-duplicate-columns": Refused(
        "qa.parquet", _parquet(pa.table([["a"], ["b"], ["c"]], names=["prompt", "completion", "prompt"])),
        ("qa.parquet: the schema names column 'prompt' twice (fields 1 and 3)",)),
    # JSON documents
    "json-nested-100000-deep": Refused("qa.json", b"[" * 100_000 + b"]" * 100_000,
                                       ("qa.json: the JSON is nested too deeply to read",)),
    "json-truncated": Refused("qa.json", json.dumps(QA, indent=1).encode()[:-200],
                              ("qa.json: invalid JSON at line ",)),
    "json-not-an-array": Refused("qa.json", json.dumps({"rows": QA}).encode(),
                                 ("qa.json: expected a JSON array of records, found a dict",)),
    # CSV structure
    "csv-duplicate-header": Refused("qa.csv", b"prompt,completion,prompt\na,b,c\nd,e,f\n",
                                    ("qa.csv: line 1: the header names column 'prompt' twice (fields 1 and 3)",)),
    "csv-header-unclosed-quote": Refused("qa.csv", b'"prompt,completion\n' + _csv(_csv_lines())[18:],
                                         ("qa.csv: line 1: cannot read the CSV header",)),
    "csv-header-only": Refused("qa.csv", CSV_HEADER.encode(), ("data.sources[0]", "qa.csv): no rows")),
    # Encodings and NUL bytes
    "utf16-without-bom-read-as-utf8": Refused(
        "qa.csv", _csv(_csv_lines()).decode().encode("utf-16-le"),
        ("qa.csv: line 1, character 2: a NUL byte", "set encoding: utf-16-le"), source={"encoding": "utf-8"}),
    "utf16-broken-code-unit": Refused("qa.csv", codecs.BOM_UTF16_LE + _csv(_csv_lines(3)).decode().encode(
        "utf-16-le") + b"\x00", ("qa.csv: line 5: not utf-16 (truncated data); the file is damaged or cut short",)),
    "nul-bytes-in-csv": Refused("sms.csv", b"prompt,completion\nhello,there\n\x00\x00\x00,\x00\n",
                                ("sms.csv: line 3, character 1: a NUL byte",)),
    "latin1-declared-utf8": Refused("qa.csv", LATIN1, (f"qa.csv: line 2, byte offset {LATIN1.index(0xE8)}: not utf-8",),
                                    source={"encoding": "utf-8"}),
    # Nothing usable
    "empty-file": Refused("qa.jsonl", b"", ("data.sources[0]", "qa.jsonl): no rows")),
    "blank-lines-only": Refused("qa.jsonl", b"\n\r\n\r  \n", ("data.sources[0]", "qa.jsonl): no rows")),
    "every-line-malformed": Refused("qa.jsonl", b"{not json\n[1, 2]\n",
                                    ("data.sources: none of the 2 rows read could be used",)),
    "one-class-labels": Refused(
        "sms.jsonl", _jsonl([{"text": f"message {i}", "label": "ham"} for i in range(30)]),
        ("stage clean_balance failed", "the label column has one class ('ham') in all 30 rows kept"),
        sections={"task": "classification"}, stage="clean_balance"),
}


@dataclass(frozen=True)
class Tolerated:
    """A data file with faults the readers tolerate by design: the rows read, and the lines quarantined."""

    file: str
    content: bytes
    rows_in: int
    quarantined_lines: tuple[int, ...] = ()
    reason: str = ""  # in every quarantine reason


TOLERATED = {
    "unclosed-quote-at-row-10-of-200": Tolerated(
        "qa.csv", _csv(_with(_csv_lines(200), i9='abbrev 9,"unclosed')), 200, (11,), "malformed CSV"),
    "quote-closed-lines-later": Tolerated(
        "qa.csv", _csv(_with(_csv_lines(), i3='abbrev 3,"opens', i6='abbrev 6,closes"')), 40, (5,),
        "each line between reads as a row by itself"),
    "lone-cr-line-endings": Tolerated("qa.csv", _csv(_csv_lines(150), ending="\r"), 150),
    "mixed-line-endings": Tolerated("qa.csv", (CSV_HEADER + "".join(
        line + ("\r", "\n", "\r\n")[i % 3] for i, line in enumerate(_csv_lines(150)))).encode(), 150),
    "jsonl-cr-line-endings": Tolerated("qa.jsonl", _jsonl(QA[:50], ending="\r"), 50),
    "jsonl-line-nested-100000-deep": Tolerated(
        "qa.jsonl", _jsonl(QA[:10]) + b"[" * 100_000 + b"]" * 100_000 + b"\n" + _jsonl(QA[10:20]), 21, (11,),
        "JSON nested too deeply to read"),
    "ragged-rows": Tolerated("qa.csv", _csv(_with(_csv_lines(), i4="only one field", i8="a,b,c,d")), 40, (6, 10),
                             "fields, expected 2"),
    "huge-field": Tolerated("qa.csv", _csv(_with(_csv_lines(), i2="abbrev," + "x" * 200_000)), 40, (4,),
                            "field larger than field limit"),
    "utf8-bom": Tolerated("qa.csv", codecs.BOM_UTF8 + _csv(_csv_lines()), 40),
    "utf16-with-bom": Tolerated("qa.csv", _csv(_csv_lines()).decode().encode("utf-16"), 40),
    "utf16-without-bom": Tolerated("qa.csv", _csv(_csv_lines()).decode().encode("utf-16-le"), 40),
    "cp1252-undeclared": Tolerated("qa.csv", _csv([f"Qu'est-ce que la fièvre {i}?,Une température élevée {i}"
                                                   for i in range(30)]).decode().encode("cp1252"), 30),
    "blank-lines-between-rows": Tolerated("qa.jsonl", b"\n\n".join(_jsonl([r]) for r in QA[:30]), 30),
    "json-items-not-objects": Tolerated("qa.json", json.dumps([*QA[:20], [1, 2], "text", None]).encode(), 23,
                                        (21, 22, 23), "not a JSON object"),
}


def _run(folder: Path, file: str, content: bytes, source: dict, capfd, **sections) -> Outcome:
    (folder / file).write_bytes(content)
    fmt = {"format": "text_label"} if sections.get("task") == "classification" else {}
    recipe = write_recipe(folder, data={"sources": [{"type": _type(file), "path": file, **source}], **fmt},
                          stages={"retries": 2, "retry_delay_s": 0}, **sections)
    return invoke(["run", recipe, "--until", "clean_balance"], capfd)


def _type(file: str) -> str:
    return file.removesuffix(".gz").rsplit(".", 1)[1]


@pytest.mark.parametrize("name", REFUSED)
def test_a_file_that_cannot_be_read_is_one_line_naming_it(name, tmp_path, capfd, ftflow_home):
    case = REFUSED[name]
    outcome = _run(tmp_path, case.file, case.content, case.source, capfd, **case.sections)
    assert_user_error(outcome, *case.fragments)
    assert "- Retry " not in outcome.stderr  # the same file fails the same way: no retry
    assert published(ftflow_home, case.stage) == []
    collected = _stages()["collect"]
    if collected["status"] == "completed":  # the data was read: every row was kept or quarantined
        m = collected["metrics"]
        assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"] > 0


@pytest.mark.parametrize("name", TOLERATED)
def test_tolerated_faults_keep_or_quarantine_every_row(name, tmp_path, capfd):
    case = TOLERATED[name]
    outcome = _run(tmp_path, case.file, case.content, {}, capfd)
    assert outcome.code == 0 and not outcome.errors, outcome.stderr
    assert "Traceback" not in outcome.stdout + outcome.stderr
    stages = _stages()
    collect, cleaned = stages["collect"], stages["clean_balance"]
    m = collect["metrics"]
    assert m["rows_in"] == case.rows_in == m["rows_kept"] + m["rows_quarantined"]
    assert cleaned["metrics"]["rows_in"] == m["rows_kept"]
    assert cleaned["metrics"]["rows_in"] == cleaned["metrics"]["rows_kept"] + cleaned["metrics"]["rows_quarantined"]
    quarantine = pd.read_parquet(collect["artifacts"]["quarantine"])
    assert quarantine["source_row"].tolist() == list(case.quarantined_lines)
    assert (quarantine["raw"].str.len() > 0).all() and quarantine["reason"].str.contains(case.reason).all()
    assert not pd.read_parquet(collect["artifacts"]["dataset"])["completion"].str.contains("\n").any()


def test_the_shared_sms_file_with_quotes_read_as_quotes_loses_no_message(tmp_path, capfd, shared_data):
    path = shared_data / "sms_spam_collection.tsv"
    source = {"delimiter": "\t", "header": False, "quotechar": '"', "columns": {"label": "0", "text": "1"}}
    recipe = write_recipe(tmp_path, task="classification", data={
        "format": "text_label", "sources": [{"type": "csv", "path": str(path), **source}]})
    outcome = invoke(["run", recipe, "--until", "clean_balance"], capfd)
    assert outcome.code == 0, outcome.stderr
    collect = _stages()["collect"]
    assert collect["metrics"]["rows_in"] == path.read_bytes().count(b"\n") == 5574
    assert collect["metrics"]["rows_in"] == collect["metrics"]["rows_kept"] + collect["metrics"]["rows_quarantined"]
    quarantine = pd.read_parquet(collect["artifacts"]["quarantine"])
    lines = path.read_text(encoding="utf-8").split("\n")
    assert quarantine["raw"].tolist() == [lines[n - 1] for n in quarantine["source_row"]]
    assert quarantine["reason"].str.contains("set quotechar: null").all()
    assert not pd.read_parquet(collect["artifacts"]["dataset"])["text"].str.contains("\n").any()


def _stages() -> dict:
    [summary] = (home() / "runs").glob("*/summary.json")
    return json.loads(summary.read_text())["stages"]


def test_a_glob_that_matches_nothing_names_the_pattern(tmp_path, capfd):
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "qa.json").write_bytes(json.dumps(QA).encode())  # .json, not .jsonl
    recipe = write_recipe(tmp_path, data={"sources": [{"type": "jsonl", "path": "exports/*.jsonl"}]})
    assert_user_error(invoke(["run", recipe, "--until", "clean_balance"], capfd),
                      "data.sources.0.path", "pattern matches no file", "exports/*.jsonl")
