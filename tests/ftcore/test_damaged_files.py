"""Input rows are never merged or lost (issue 19, items 9 and 10): a reader that cannot tell where rows end says so
with line numbers and keeps the text of what it sets aside; a damaged file is one DataError naming the file and line.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ftcore.data.clean import CleanJob, clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
from ftcore.data.config import BalanceConfig, CleanConfig, DataConfig
from ftcore.data.sources.config import FileSource
from ftcore.data.sources.parse import text_lines
from ftcore.errors import DataError
from tests.ftcore.source_reading import read_all, read_error

QA = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(100)]


def _collect(tmp_path: Path, fmt: str = "prompt_completion", **source) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    out = collect_stage(CollectJob(data=DataConfig(format=fmt, sources=[source]), sources={}), tmp_path / "collected")
    rows, bad = pd.read_parquet(out.splits["all"]), pd.read_parquet(out.artifacts["quarantine"])
    assert out.metrics["rows_in"] == len(rows) + len(bad)
    return rows, bad, out.metrics


def _csv_lines(n: int) -> list[str]:
    return [f"question {i},answer {i}" for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Item 9: CSV rows merged silently


def test_an_unclosed_quote_costs_its_own_line_not_the_rest_of_the_file(tmp_path):
    lines = _csv_lines(200)
    lines[9] = 'question 9,"answer 9 with a quote that never closes'
    path = tmp_path / "qa.csv"
    path.write_text("prompt,completion\n" + "\n".join(lines) + "\n")
    rows, bad, metrics = _collect(tmp_path, type="csv", path=path)
    assert metrics["rows_in"] == 200
    assert len(rows) == 199 and "\n" not in "".join(rows["completion"])
    assert bad["source_row"].tolist() == [11]  # line 11: the header is line 1
    assert bad["raw"].tolist() == [lines[9]]
    assert "malformed CSV" in bad["reason"][0] and "to line 201" in bad["reason"][0]


def test_a_quote_closed_lines_later_does_not_glue_the_rows_between(tmp_path):
    """Well-formed CSV by the letter, but every line between the quotes is a row by itself: a stray quote."""
    lines = _csv_lines(10)
    lines[2], lines[5] = 'question 2,"answer 2', 'question 5,answer 5"'
    path = tmp_path / "qa.csv"
    path.write_text("prompt,completion\n" + "\n".join(lines) + "\n")
    rows, bad, _ = _collect(tmp_path, type="csv", path=path)
    assert rows["source_row"].tolist() == [2, 3, 5, 6, 7, 8, 9, 10, 11]
    assert rows["completion"].tolist()[4] == 'answer 5"'
    assert bad[["source_row", "raw"]].values.tolist() == [[4, lines[2]]]
    assert "closes on line 7" in bad["reason"][0] and "quotechar: null" in bad["reason"][0]


def test_a_quoted_field_with_line_breaks_stays_one_row(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('prompt,completion\n"first line\nsecond line\n\nlast line",answer\nnext,row\n')
    rows, bad, _ = _collect(tmp_path, type="csv", path=path)
    assert rows["prompt"].tolist() == ["first line\nsecond line\n\nlast line", "next"]
    assert rows["source_row"].tolist() == [2, 6] and bad.empty


def test_in_a_one_column_file_a_closed_quote_is_trusted(tmp_path):
    """Every line of a one-column file reads as a row: a field with line breaks cannot be told from a stray quote."""
    path = tmp_path / "notes.csv"
    path.write_text('text\n"first paragraph\nsecond paragraph"\nnext note\n')
    rows, bad, _ = _collect(tmp_path, "text", type="csv", path=path)
    assert rows["text"].tolist() == ["first paragraph\nsecond paragraph", "next note"] and bad.empty


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_every_line_ending_ends_a_row(tmp_path, ending):
    """Old Mac files end lines with a lone \\r; mixed endings too."""
    lines = _csv_lines(150)
    path = tmp_path / "qa.csv"
    path.write_bytes(("prompt,completion" + ending + "".join(
        line + (ending if i % 3 else "\n") for i, line in enumerate(lines))).encode())
    rows, bad, _ = _collect(tmp_path, type="csv", path=path)
    assert rows["prompt"].tolist() == [f"question {i}" for i in range(150)] and bad.empty
    assert rows["source_row"].tolist() == list(range(2, 152))


def test_the_sms_file_with_quotes_as_quotes_loses_and_glues_nothing(tmp_path, shared_data):
    path = shared_data / "sms_spam_collection.tsv"
    physical = path.read_bytes().count(b"\n")
    rows, bad, metrics = _collect(tmp_path, "text_label", type="csv", path=path, delimiter="\t", header=False,
                                  quotechar='"', columns={"label": "0", "text": "1"})
    assert metrics["rows_in"] == physical == 5574
    assert not rows["text"].str.contains("\n").any()  # no message glued to the next
    assert (bad["raw"].str.len() > 0).all() and bad["reason"].str.contains("quotechar: null").all()
    lines = path.read_text(encoding="utf-8").split("\n")
    assert [lines[n - 1] for n in bad["source_row"]] == bad["raw"].tolist()


def test_malformed_csv_records_keep_their_text(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('prompt,completion\n"quoted" then text,x\nok,fine\n' + "a," + "b" * 140_000 + "\n")
    _, bad, _ = _collect(tmp_path, type="csv", path=path)
    assert bad["source_row"].tolist() == [2, 4]
    assert bad["raw"].tolist() == ['"quoted" then text,x', ("a," + "b" * 140_000)[:500]]
    assert bad["reason"].str.startswith("malformed CSV").all()


def test_physical_lines_are_split_only_at_line_endings():
    blocks = ["a\u2028b\x0cc\r", "\nd\re", "\n", "f"]  # \r\n split across blocks; U+2028 and form feed are text
    assert list(text_lines(blocks)) == ["a\u2028b\x0cc\r\n", "d\r", "e\n", "f"]


# ---------------------------------------------------------------------------------------------------------------
# Item 10: damaged files are one line naming the file (and line), not tracebacks


def _jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_a_truncated_gzip_names_the_file_and_line(tmp_path):
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl_text(QA).encode())[:-40])
    message = read_error(FileSource(type="jsonl", path=path))
    assert message.startswith(f"{path}: line ") and "the gzip stream ends early (the file is truncated)" in message


def test_corrupt_gzip_data_names_the_file(tmp_path):
    data = bytearray(gzip.compress(_jsonl_text(QA).encode()))
    data[30:60] = b"\xff" * 30
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(bytes(data))
    assert read_error(FileSource(type="jsonl", path=path)).startswith(f"{path}: ")


def _parquet(path: Path, rows: int = 5000) -> Path:
    pd.DataFrame({"prompt": [f"question {i}" for i in range(rows)], "completion": ["x" * 50] * rows}).to_parquet(
        path, compression=None, row_group_size=1000)
    return path


def test_a_damaged_parquet_page_names_the_file_and_rows(tmp_path):
    path = _parquet(tmp_path / "qa.parquet")
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 400] = b"\xff" * 400
    path.write_bytes(bytes(data))
    message = read_error(FileSource(type="parquet", path=path))
    assert message.startswith(f"{path}: rows from ") and "cannot be read" in message


def test_parquet_rows_read_must_match_the_metadata(tmp_path, monkeypatch):
    path = _parquet(tmp_path / "qa.parquet")
    iter_batches = pq.ParquetFile.iter_batches

    def losing_the_first_batch(self, **kwargs):
        batches = iter_batches(self, **kwargs)
        next(batches)
        return batches

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", losing_the_first_batch)
    assert "rows read, but the file's metadata counts 5000" in read_error(FileSource(type="parquet", path=path))


def test_a_json_line_nested_too_deeply_is_quarantined_alone(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(_jsonl_text(QA[:2]) + "[" * 100_000 + "]" * 100_000 + "\n" + _jsonl_text(QA[2:4]))
    rows, bad, _ = _collect(tmp_path, type="jsonl", path=path)
    assert rows["source_row"].tolist() == [1, 2, 4, 5]
    assert bad[["source_row", "reason"]].values.tolist() == [[3, "JSON nested too deeply to read"]]
    assert bad["raw"][0] == "[" * 500


def test_a_json_array_nested_too_deeply_names_the_file(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert "the JSON is nested too deeply to read" in read_error(FileSource(type="json", path=path))


def test_a_value_nested_too_deeply_is_quarantined_with_its_column(tmp_path):
    path = tmp_path / "chats.csv"
    chat = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    path.write_text("messages\n" + '"' + chat.replace('"', '""') + '"\n' + "[" * 100_000 + "\n")
    _, bad, _ = _collect(tmp_path, "messages", type="csv", path=path)
    assert bad["reason"].tolist() == ["messages: nested too deeply to read"]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_column_name_used_twice_is_refused(tmp_path, kind):
    path = tmp_path / f"qa.{kind}"
    if kind == "csv":
        path.write_text("prompt,completion,prompt\na,b,c\n")
    else:
        import pyarrow as pa

        pq.write_table(pa.table([["a"], ["b"], ["c"]], names=["prompt", "completion", "prompt"]), path)
    assert "column 'prompt' twice (fields 1 and 3); give each column its own name" in read_error(
        FileSource(type=kind, path=path))


def test_utf16_without_a_byte_order_mark_is_read_or_named(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes("prompt,completion\r\nwhat is BP?,blood pressure\r\nwhat is MI?,infarct\r\n".encode("utf-16-le"))
    rows, bad, _ = _collect(tmp_path, type="csv", path=path)  # encoding: auto
    assert rows[["prompt", "completion"]].values.tolist() == [["what is BP?", "blood pressure"],
                                                              ["what is MI?", "infarct"]] and bad.empty
    message = read_error(FileSource(type="csv", path=path, encoding="utf-8"))
    assert message.startswith(f"{path}: line 1, character 2: a NUL byte") and "set encoding: utf-16-le" in message


def test_utf16_with_a_broken_code_unit_names_the_line(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes("prompt,completion\na,b\n".encode("utf-16") + b"\x00")
    assert read_error(FileSource(type="csv", path=path)).startswith(f"{path}: line 3: not utf-16")


def test_jsonl_with_carriage_return_line_endings_reads_every_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_bytes("".join(json.dumps(r) + "\r" for r in QA[:10]).encode())
    rows, bad, _ = _collect(tmp_path, type="jsonl", path=path)
    assert rows["prompt"].tolist() == [r["prompt"] for r in QA[:10]] and bad.empty


def test_nul_bytes_in_text_name_the_file_and_line(tmp_path):
    path = tmp_path / "sms.csv"
    path.write_text("text,label\nhello,ham\n\x00\x00\x00,\x00\n")
    message = read_error(FileSource(type="csv", path=path))
    assert message.startswith(f"{path}: line 3, character 1: a NUL byte; the file is binary or damaged")


@pytest.mark.parametrize(("content", "problem"), [
    (gzip.compress(b'{"prompt": "a"}\n', mtime=0), "is gzip-compressed; give it a .gz suffix"),
    (b"PAR1\x00\x00", "is a Parquet file; set type: parquet"),
    (b"PK\x03\x04\x14\x00", "is a ZIP archive (an .xlsx workbook?)"),
], ids=["gzip", "parquet", "zip"])
def test_a_binary_container_read_as_text_is_named(tmp_path, content, problem):
    path = tmp_path / "qa.csv"
    path.write_bytes(content)
    assert read_error(FileSource(type="csv", path=path)).startswith(f"{path}: the file {problem}")


def test_one_class_labels_are_refused_at_clean_balance(tmp_path):
    path = tmp_path / "sms.jsonl"
    path.write_text(_jsonl_text([{"text": f"message {i}", "label": "ham"} for i in range(20)]))
    data = DataConfig(format="text_label", sources=[{"type": "jsonl", "path": path}])
    collected = collect_stage(CollectJob(data=data, sources={}), tmp_path / "collected")
    with pytest.raises(DataError, match=r"^clean_balance: the label column has one class \('ham'\) in all 20 rows"):
        clean_balance_stage(CleanJob(collected=collected, data=data, clean=CleanConfig(), balance=BalanceConfig()),
                            tmp_path / "clean")
    assert not (tmp_path / "clean").exists()


def test_a_class_too_small_to_reach_the_train_split_is_refused(tmp_path):
    path = tmp_path / "sms.jsonl"
    path.write_text(_jsonl_text([{"text": f"message {i}", "label": "ham" if i else "spam"} for i in range(20)]))
    data = DataConfig(format="text_label", sources=[{"type": "jsonl", "path": path}])
    with pytest.raises(DataError, match=r"train split has 1 class\(es\) \('ham'\); the rows of the others "
                                        r"\('spam': 1 row\(s\)\) all went to the test"):
        clean_balance_stage(CleanJob(collected=collect_stage(CollectJob(data=data, sources={}),
                                      tmp_path / "collected"), data=data, clean=CleanConfig(), balance=BalanceConfig()),
                            tmp_path / "clean")


def test_collect_refuses_to_publish_when_rows_read_are_not_all_kept_or_quarantined(tmp_path, monkeypatch):
    import ftcore.data.collect

    to_canonical = ftcore.data.collect.to_canonical

    def losing_a_row(*args):
        kept, bad = to_canonical(*args)
        return kept[1:], bad

    monkeypatch.setattr(ftcore.data.collect, "to_canonical", losing_a_row)
    path = tmp_path / "qa.jsonl"
    path.write_text(_jsonl_text(QA[:10]))
    with pytest.raises(DataError, match=r"10 rows read but 9 kept \+ 0 quarantined; rows would be lost"):
        collect_stage(CollectJob(data=DataConfig(sources=[{"type": "jsonl", "path": path}]), sources={}),
                      tmp_path / "collected")
    assert not (tmp_path / "collected").exists()


def test_reading_a_file_twice_in_batches_gives_the_same_rows(tmp_path):
    """The line accounting does not depend on the batch size (records replayed after a bad quote included)."""
    lines = _csv_lines(50)
    lines[7] = 'question 7,"open'
    path = tmp_path / "qa.csv"
    path.write_text("prompt,completion\n" + "\n".join(lines) + "\n")
    source = FileSource(type="csv", path=path)
    small, large = read_all(source, batch_rows=3), read_all(source, batch_rows=1000)
    rows = [pd.concat([c.rows for c in chunks], ignore_index=True) for chunks in (small, large)]
    assert rows[0].equals(rows[1]) and rows[0]["source_row"].tolist() == [n for n in range(2, 52) if n != 9]
    bad = [b for c in small for b in c.bad]
    assert bad == [b for c in large for b in c.bad] and [b["source_row"] for b in bad] == [9]
