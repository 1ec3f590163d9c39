"""Bad input a user can cause in the data stages: one line naming the source and the fix, exit 2, not retried, and
no partial dataset published."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from ftcore.paths import home
from tests.loopback import QuietHandler, serve

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


def _recipe(tmp_path: Path, data: dict, **sections) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "bad-input", "data": data, "stages": {"retries": 2}, **sections}))
    return path


def _run(recipe: Path) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["run", str(recipe), "--until", "clean_balance"])
    return result.exit_code, [line for line in result.output.splitlines() if line.startswith("error:")]


def _published(stage: str) -> list[Path]:
    folder = home() / "artifacts" / stage
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []


@pytest.fixture
def not_found_server():
    class NotFound(QuietHandler):
        def do_GET(self):
            self.send_error(404)

    with serve(NotFound) as base:
        yield f"{base}/rows.json"


def test_an_empty_source(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    code, errors = _run(_recipe(tmp_path, {"sources": [{"type": "jsonl", "path": "empty.jsonl"}]}))
    assert code == 2 and len(errors) == 1
    assert "stage collect failed: DataError: data.sources[0]" in errors[0] and "empty.jsonl): no rows" in errors[0]
    assert _published("collect") == []


def test_wrong_column_names_list_the_columns_found(tmp_path):
    (tmp_path / "qa.csv").write_text("question,reply\nWhat is BP?,blood pressure\n")
    code, errors = _run(_recipe(tmp_path, {"sources": [{"type": "csv", "path": "qa.csv",
                                                        "columns": {"prompt": "question"}}]}))
    assert code == 2 and len(errors) == 1
    assert "qa.csv: missing completion (from column 'completion'); columns found: question, reply" in errors[0]


def test_a_query_that_fails_names_the_source(tmp_path):
    sqlite3.connect(tmp_path / "qa.db").execute("CREATE TABLE qa (question TEXT, answer TEXT)").connection.commit()
    code, errors = _run(_recipe(tmp_path, {"sources": [{"type": "sql", "name": "warehouse", "url": "sqlite:///qa.db",
                                                        "query": "SELECT question, answer FROM missing_table"}]}))
    assert code == 2 and len(errors) == 1
    assert "warehouse" in errors[0] and "query failed" in errors[0] and "missing_table" in errors[0]
    assert _published("collect") == []


def test_an_http_404_is_not_retried_and_names_the_url(tmp_path, not_found_server):
    code, errors = _run(_recipe(tmp_path, {"sources": [{"type": "http", "url": not_found_server}]}))
    assert code == 2 and len(errors) == 1
    assert f"({not_found_server}): HTTP 404 Not Found; check the URL" in errors[0]


def test_balancing_a_label_with_one_class(tmp_path):
    (tmp_path / "sms.jsonl").write_text("".join(f'{{"text": "message {i}", "label": "ham"}}\n' for i in range(20)))
    code, errors = _run(_recipe(tmp_path, {"sources": [{"type": "jsonl", "path": "sms.jsonl"}], "format": "text_label"},
                                task="classification", balance={"strategy": "oversample"}))
    assert code == 2 and len(errors) == 1
    assert "stage clean_balance failed" in errors[0] and "one class ('ham')" in errors[0]
    assert _published("clean_balance") == []
