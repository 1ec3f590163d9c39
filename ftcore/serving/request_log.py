"""The request log: one row per request the endpoint answered (or refused), appended and never changed. The monitor
reads it over a time window. Any SQLAlchemy database holds it: SQLite by default, PostgreSQL in production.

The server writes through `RequestLogWriter`, a background thread, so a request never waits on the database."""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ftcore.errors import UserError

# The status recorded for a client that closed the connection before its answer (nginx's): neither the server's
# fault nor a refusal, so the monitor leaves it out of both error rates.
CLIENT_CLOSED = 499
metadata = MetaData()
requests_table = Table(
    "ftflow_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),  # when the request arrived: unix seconds, UTC
    Column("model", String(256), nullable=False, index=True),  # the registered model's name (or the folder)
    Column("version", String(64), nullable=False),
    Column("endpoint", String(64), nullable=False),  # completions, chat.completions, classify
    Column("status", Integer, nullable=False),  # the HTTP status returned; 499: the client left before the answer
    Column("latency_s", Float, nullable=False),  # arrival to response, queueing and batching included
    Column("tokens_in", Integer, nullable=False, default=0),
    Column("tokens_out", Integer, nullable=False, default=0),
    Column("cached", Boolean, nullable=False, default=False),
    Column("error", Text),  # the error type and message of a failed request
    Column("input", Text),  # the prompt (or text), kept for a sample of requests (request_log.sample_rate)
    Column("output", Text),  # the answer, kept with the input
    Column("images", Text),  # a chat's images: a JSON list of {width, height, brightness} (serving/images.py)
)


@dataclass
class RequestRecord:
    ts: float
    model: str
    version: str
    endpoint: str
    status: int
    latency_s: float
    tokens_in: int = 0
    tokens_out: int = 0
    cached: bool = False
    error: str | None = None
    input: str | None = None
    output: str | None = None
    images: str | None = None


MAX_BATCH = 500  # records per insert: a steady stream of requests still gets written
COLUMNS = [f.name for f in fields(RequestRecord)]


class RequestLog:
    """The table behind a SQLAlchemy URL, created when missing."""

    def __init__(self, url: str):
        self.url = url
        try:
            self.engine = create_engine(url)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_wal)
                if self.engine.url.database not in (None, "", ":memory:"):
                    Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
            metadata.create_all(self.engine)
            _add_new_columns(self.engine)
        except (SQLAlchemyError, ArgumentError, OSError) as e:
            raise UserError(f"request_log.url: cannot open {url!r} ({str(e).splitlines()[0]}); give a SQLAlchemy "
                            "URL of a reachable database, e.g. sqlite:///requests.db") from None

    def append(self, records: list[RequestRecord]) -> None:
        if records:
            with self.engine.begin() as conn:
                conn.execute(insert(requests_table), [asdict(r) for r in records])

    def read(self, since: float | None = None, until: float | None = None, model: str | None = None) -> pd.DataFrame:
        """The requests that arrived in [since, until), oldest first, as a frame with the RequestRecord columns."""
        query = select(*(requests_table.c[name] for name in COLUMNS)).order_by(requests_table.c.id)
        if since is not None:
            query = query.where(requests_table.c.ts >= since)
        if until is not None:
            query = query.where(requests_table.c.ts < until)
        if model is not None:
            query = query.where(requests_table.c.model == model)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return pd.DataFrame(rows, columns=COLUMNS)

    def close(self) -> None:
        self.engine.dispose()


def _add_new_columns(engine) -> None:
    """A log created by an earlier ftflow gets the columns added since (empty for its old rows): create_all leaves
    an existing table as it is, and inserts naming a missing column would fail."""
    present = {column["name"] for column in inspect(engine).get_columns(requests_table.name)}
    missing = [column for column in requests_table.columns if column.name not in present]
    with engine.begin() as conn:
        for column in missing:
            conn.execute(text(f"ALTER TABLE {requests_table.name} ADD COLUMN {column.name} "
                              f"{column.type.compile(engine.dialect)}"))


def _sqlite_wal(dbapi_connection, _record) -> None:
    # WAL lets the monitor read while the server writes; without it a reader can block the writer.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA busy_timeout=5000")


class RequestLogWriter:
    """Records requests from any thread; a background thread appends them in batches. Input and output text (and
    the input's image statistics) are kept for a `sample_rate` share of requests; the numbers are kept for all."""

    def __init__(self, log: RequestLog, sample_rate: float = 1.0, flush_interval_s: float = 0.25, seed: int = 0):
        self.log, self.sample_rate, self.flush_interval_s = log, sample_rate, flush_interval_s
        self._random = random.Random(seed)
        self._queue: queue.SimpleQueue[RequestRecord | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ftflow-request-log", daemon=True)
        self._thread.start()

    def record(self, rec: RequestRecord) -> None:
        if self._random.random() >= self.sample_rate:
            rec.input = rec.output = rec.images = None
        self._queue.put(rec)

    def close(self) -> None:
        """Write what is queued, stop, and close the database connections (SQLite then folds its WAL file back)."""
        self._queue.put(None)
        self._thread.join()
        self.log.close()

    def _run(self) -> None:
        while True:
            batch, stop = [self._queue.get()], False
            try:
                while len(batch) < MAX_BATCH and None not in batch:
                    batch.append(self._queue.get(timeout=self.flush_interval_s))
            except queue.Empty:
                pass
            if None in batch:
                batch, stop = [r for r in batch if r is not None], True
            try:
                self.log.append(batch)
            except Exception as e:  # the endpoint keeps serving when the log's database is down
                logging.getLogger("ftflow.serve").error("request log: %d records lost (%s)", len(batch), e)
            if stop:
                return
