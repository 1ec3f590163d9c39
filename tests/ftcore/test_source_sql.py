"""SQL sources, read from real databases: a SQLite file, and PostgreSQL (started by .ci/postgres.sh).

The PostgreSQL tests also check that the password (from an environment variable or a Prefect Secret block) shows up
in no error, no traceback and no log line.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ftcore.data.sources import Chunk, read_source
from ftcore.data.sources import secrets as source_secrets
from ftcore.data.sources.config import SqlSource
from ftcore.errors import DataError

# id, question, answer (NULL for every third), label
ROWS = [(i, f"question {i}", None if i % 3 == 0 else f"answer {i}", i % 2) for i in range(1, 8)]


def sql_source(url: str, query: str = "SELECT id, question, answer, label FROM qa ORDER BY id", **kw) -> SqlSource:
    return SqlSource.model_validate({"type": "sql", "url": url, "query": query, **kw})


def read_all(source: SqlSource, batch_rows: int = 3) -> list[Chunk]:
    return list(read_source(source, batch_rows))


def read_error(source: SqlSource) -> DataError:
    with pytest.raises(DataError) as info:
        read_all(source)
    return info.value


def assert_one_line(error: BaseException, *expected: str) -> str:
    message = str(error)
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    return message


def assert_rows(chunks: list[Chunk]) -> None:
    assert [len(c.rows) for c in chunks] == [3, 3, 1]  # 7 rows, batch_rows=3
    rows = [r for c in chunks for r in c.rows.to_dict("records")]
    assert [(r["id"], r["question"], r["answer"], r["label"]) for r in rows] == ROWS
    assert [r["source_row"] for r in rows] == list(range(1, 8))
    assert rows[2]["answer"] is None  # NULL stays None, not NaN
    assert all(c.bad == [] for c in chunks)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "qa.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE qa (id INTEGER, question TEXT, answer TEXT, label INTEGER)")
        conn.executemany("INSERT INTO qa VALUES (?, ?, ?, ?)", ROWS)
    conn.close()
    return path


def test_sqlite_rows_come_back_in_chunks_of_batch_rows(sqlite_db: Path) -> None:
    chunks = read_all(sql_source(f"sqlite:///{sqlite_db}"))
    assert_rows(chunks)
    assert {c.origin for c in chunks} == {"sql"}


def test_query_params_are_bound(sqlite_db: Path) -> None:
    source = sql_source(f"sqlite:///{sqlite_db}", "SELECT id FROM qa WHERE id >= :first AND label = :label",
                        params={"first": 4, "label": 1})
    assert [r for c in read_all(source) for r in c.rows["id"]] == [5, 7]


def test_sqlite_path_is_relative_to_the_recipe_folder(sqlite_db: Path) -> None:
    source = SqlSource.model_validate({"type": "sql", "url": "sqlite:///qa.db", "query": "SELECT id FROM qa"},
                                      context={"base_dir": sqlite_db.parent})
    assert sum(len(c.rows) for c in read_all(source)) == 7


def test_missing_sqlite_file_is_one_line_naming_the_source(tmp_path: Path) -> None:
    error = read_error(sql_source(f"sqlite:///{tmp_path}/absent.db", name="notes"))
    assert_one_line(error, "notes", "absent.db", "SQLite file not found")
    assert not (tmp_path / "absent.db").exists()  # not created as an empty database


def test_failing_query_is_one_line_with_the_database_error(sqlite_db: Path) -> None:
    error = read_error(sql_source(f"sqlite:///{sqlite_db}", "SELECT * FROM nope"))
    assert_one_line(error, "data.sources (sql sqlite:///", "query failed: no such table: nope")


def test_a_statement_without_rows_is_refused(sqlite_db: Path) -> None:
    error = read_error(sql_source(f"sqlite:///{sqlite_db}", "DELETE FROM qa"))
    assert_one_line(error, "returns no rows; write a SELECT")


def test_missing_driver_says_which_url_to_write() -> None:
    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed: postgresql+psycopg:// has its driver")
    error = read_error(sql_source("postgresql+psycopg://ftflow@127.0.0.1:1/db"))
    assert_one_line(error, "no database driver for 'postgresql+psycopg'", "write postgresql+psycopg2://")


def test_unset_environment_variable_names_the_variable() -> None:
    source = sql_source("postgresql+psycopg2://u:${env:FTFLOW_TEST_UNSET_VAR}@127.0.0.1:1/db", name="warehouse")
    assert_one_line(read_error(source), "warehouse", "FTFLOW_TEST_UNSET_VAR is not set", "export")


def test_secret_placeholder_without_prefect_says_when_it_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(source_secrets._RESOLVERS, "secret", raising=False)
    source = sql_source("postgresql+psycopg2://u:${secret:warehouse-pw}@127.0.0.1:1/db")
    assert_one_line(read_error(source), "${secret:warehouse-pw}", "resolved only when running the flow")


def test_registered_resolver_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(source_secrets._RESOLVERS, "secret", lambda name: f"<{name}>")
    assert source_secrets.resolve("a ${secret:x} b ${secret:y}") == "a <x> b <y>"


def test_literal_password_in_the_url_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="the URL contains a password"):
        sql_source("postgresql+psycopg2://u:hunter2@127.0.0.1/db")


# PostgreSQL --------------------------------------------------------------------------------------------------------

@pytest.fixture
def pg_table(postgres_url: str) -> Iterator[str]:
    """A table holding ROWS in the test server; dropped afterwards."""
    engine = create_engine(make_url(postgres_url).set(password=os.environ["FTFLOW_TEST_PGPASSWORD"]))
    table = f"qa_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (id INTEGER, question TEXT, answer TEXT, label INTEGER)"))
        conn.execute(text(f"INSERT INTO {table} VALUES (:id, :q, :a, :label)"),
                     [{"id": i, "q": q, "a": a, "label": label} for i, q, a, label in ROWS])
    yield table
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {table}"))
    engine.dispose()


def assert_secret_hidden(secret: str, error: BaseException | None, caplog: pytest.LogCaptureFixture,
                         capfd: pytest.CaptureFixture) -> None:
    outputs = [caplog.text, *capfd.readouterr()]
    if error is not None:
        outputs.append("".join(traceback.format_exception(error)))  # what the CLI or Prefect would print
    assert all(secret not in out for out in outputs)


def test_postgres_rows_come_back_streamed(postgres_url: str, pg_table: str, caplog: pytest.LogCaptureFixture,
                                          capfd: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # also turns on SQLAlchemy's engine and pool logging
    chunks = read_all(sql_source(postgres_url, f"SELECT id, question, answer, label FROM {pg_table} ORDER BY id"))
    assert_rows(chunks)
    assert_secret_hidden(os.environ["FTFLOW_TEST_PGPASSWORD"], None, caplog, capfd)


def test_postgres_failing_query_hides_the_password(postgres_url: str, caplog: pytest.LogCaptureFixture,
                                                   capfd: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    error = read_error(sql_source(postgres_url, "SELECT * FROM no_such_table", name="warehouse"))
    message = assert_one_line(error, "data.sources (warehouse postgresql+psycopg2://ftflow:***@127.0.0.1:",
                              'query failed: relation "no_such_table" does not exist')
    assert "${env:" not in message
    assert_secret_hidden(os.environ["FTFLOW_TEST_PGPASSWORD"], error, caplog, capfd)


def test_postgres_wrong_password_hides_it(postgres_url: str, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Pa55word-" + uuid.uuid4().hex
    monkeypatch.setenv("FTFLOW_TEST_PGPASSWORD", wrong)
    error = read_error(sql_source(postgres_url, "SELECT 1"))
    assert_one_line(error, "query failed:", "password authentication failed")
    assert_secret_hidden(wrong, error, caplog, capfd)


def test_unreachable_postgres_is_one_line_without_the_password(postgres_url: str, caplog: pytest.LogCaptureFixture,
                                                               capfd: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    closed_port = make_url(postgres_url).set(port=1).render_as_string(hide_password=False)
    error = read_error(sql_source(closed_port, "SELECT 1"))
    assert_one_line(error, "127.0.0.1:1/ftflow", "query failed:", "Connection refused")
    assert_secret_hidden(os.environ["FTFLOW_TEST_PGPASSWORD"], error, caplog, capfd)


def test_postgres_password_with_url_special_characters(postgres_url: str, pg_table: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Set on the parsed URL, not pasted into the URL string: "@", "/", ":" and "%" need no escaping by the user.
    special, usual = "p@ss/w:rd%41 #?", os.environ["FTFLOW_TEST_PGPASSWORD"]
    engine = create_engine(make_url(postgres_url).set(password=usual))
    set_password = "ALTER ROLE CURRENT_USER PASSWORD %(password)s"  # one's own password needs no privilege
    with engine.begin() as conn:
        conn.exec_driver_sql(set_password, {"password": special})
    try:
        monkeypatch.setenv("FTFLOW_TEST_PGPASSWORD", special)
        assert sum(len(c.rows) for c in read_all(sql_source(postgres_url, f"SELECT id FROM {pg_table}"))) == 7
    finally:
        with engine.begin() as conn:  # a pooled connection, already authenticated
            conn.exec_driver_sql(set_password, {"password": usual})
        engine.dispose()


def test_postgres_password_from_a_prefect_secret_block(postgres_url: str, pg_table: str,
                                                       request: pytest.FixtureRequest,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    from tasks.secrets import register_prefect_secrets

    # Requested here, not as a parameter: a session fixture would start (15 s) before a missing server skips the test.
    request.getfixturevalue("prefect_harness")
    monkeypatch.setattr(source_secrets, "_RESOLVERS", dict(source_secrets._RESOLVERS))  # undone after the test
    register_prefect_secrets()
    Secret(value=os.environ["FTFLOW_TEST_PGPASSWORD"]).save("ftflow-test-pg", overwrite=True)
    url = postgres_url.replace("${env:FTFLOW_TEST_PGPASSWORD}", "${secret:ftflow-test-pg}")
    assert url != postgres_url
    assert sum(len(c.rows) for c in read_all(sql_source(url, f"SELECT id FROM {pg_table}"))) == 7


def test_missing_prefect_secret_block_is_one_line(prefect_harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.secrets import register_prefect_secrets

    monkeypatch.setattr(source_secrets, "_RESOLVERS", dict(source_secrets._RESOLVERS))
    register_prefect_secrets()
    source = sql_source("postgresql+psycopg2://u:${secret:ftflow-no-such-block}@127.0.0.1:1/db", name="warehouse")
    assert_one_line(read_error(source), "data.sources (warehouse) url: ${secret:ftflow-no-such-block}: "
                                        "no Prefect Secret block named 'ftflow-no-such-block'")
