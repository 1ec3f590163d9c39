"""A SQL query as a source: any database SQLAlchemy 2 reaches (SQLite, PostgreSQL, ...), streamed in chunks.

The password comes from a placeholder in the URL and is set on the parsed URL object, never pasted into the URL
string: pasted, a password with `@` in it would be split at the wrong place unless percent-escaped by hand.
Messages show the URL with the password masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import SqlSource, parse_sql_url
from ftcore.data.sources.secrets import resolve
from ftcore.errors import DataError

_DOCS_LINK = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def read_sql(source: SqlSource, batch_rows: int) -> Iterator[Chunk]:
    named = parse_sql_url(source.url)  # parses: the config validator already checked it
    url = _resolved_url(source, named)
    # Messages show the resolved user, host and database, but the query parameters (credentials among them) as named.
    where = f"data.sources ({source.label()} {url.set(query=named.query).render_as_string(hide_password=True)})"
    _check_sqlite_file(url, where)
    try:
        engine = create_engine(url)
    except (ImportError, NoSuchModuleError) as e:  # e.g. postgresql+psycopg (psycopg 3): not installed
        raise DataError(f"{where}: no database driver for {url.drivername!r} ({e}); install it, or for PostgreSQL "
                        f"write postgresql+psycopg2:// (installed with ftflow)") from None
    try:
        yield from _query(engine, source, batch_rows, where)
    finally:
        engine.dispose()


def _query(engine: Engine, source: SqlSource, batch_rows: int, where: str) -> Iterator[Chunk]:
    first_row = 1
    try:
        with engine.connect() as conn:
            # stream_results: a server-side cursor where the driver has one, so the result is never held whole.
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                text(source.query), source.params)
            if not result.returns_rows:
                raise DataError(f"{where}: the statement returns no rows; write a SELECT")
            columns = list(result.keys())
            for rows in result.partitions(batch_rows):
                # object dtype keeps the database's values as they are: NULL stays None, an int column with
                # NULLs does not turn into floats.
                frame = pd.DataFrame([tuple(r) for r in rows], columns=columns, dtype=object)
                frame[ROW_ID] = range(first_row, first_row + len(frame))
                first_row += len(frame)
                yield Chunk(rows=frame, origin=source.label())
    except SQLAlchemyError as e:
        # `from None`: the chained exception is not printed with this one.
        raise DataError(f"{where}: query failed: {_db_message(e)}") from None


def _resolved_url(source: SqlSource, url: URL) -> URL:
    try:
        return url.set(**{part: resolve(value) for part in ("username", "password", "host", "database")
                          if isinstance(value := getattr(url, part), str)},
                       query={key: _resolved_query_value(value) for key, value in url.query.items()})
    except DataError as e:
        raise DataError(f"data.sources ({source.label()}) url: {e}") from None


def _resolved_query_value(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    return resolve(value) if isinstance(value, str) else tuple(resolve(v) for v in value)


def _check_sqlite_file(url: URL, where: str) -> None:
    # SQLite creates a missing file and then reports "no such table", which hides the real mistake.
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:" and not Path(database).is_file():
        raise DataError(f"{where}: SQLite file not found: {database} (relative paths are relative to the recipe's "
                        f"folder)")


def _db_message(error: SQLAlchemyError) -> str:
    """The first line of the driver's message (`orig`) or SQLAlchemy's own, without SQLAlchemy's docs link."""
    orig = getattr(error, "orig", None)  # only StatementError and its DBAPIError subclasses have one
    lines = str(orig if orig is not None else error).strip().splitlines()
    return _DOCS_LINK.sub("", lines[0]) if lines else type(error).__name__
