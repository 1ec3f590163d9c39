"""HTTP sources against a real HTTP server on 127.0.0.1 that can fail, stall and check headers on demand."""

from __future__ import annotations

import json
import logging
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

from ftcore.data.sources import Chunk
from ftcore.data.sources.config import HttpSource
from ftcore.errors import DataError
from tests.ftcore.source_reading import read_all, read_error
from tests.loopback import QuietHandler, serve


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "application/json"
    delay_s: float = 0.0  # sleep before answering, to make the client time out


@dataclass
class Server:
    """Routes map a path to a function of (hit number from 1, request headers) -> Reply; hits are counted."""

    base: str = ""
    routes: dict[str, Callable[[int, dict[str, str]], Reply]] = field(default_factory=dict)
    hits: dict[str, list[float]] = field(default_factory=dict)  # path -> monotonic time of each request

    def route(self, path: str, *replies: Reply) -> str:
        """Answer the n-th request with replies[n-1], and every later one with the last reply."""
        self.routes[path] = lambda n, _headers: replies[min(n, len(replies)) - 1]
        return self.base + path

    def count(self, path: str) -> int:
        return len(self.hits.get(path, []))


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            state.hits.setdefault(self.path, []).append(time.monotonic())
            reply = state.routes[self.path](state.count(self.path), dict(self.headers))
            time.sleep(reply.delay_s)
            body = reply.body.encode() if isinstance(reply.body, str) else reply.body
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout test)
                pass

    with serve(Handler) as base:
        state.base = base
        yield state


def http_source(url: str | list[str], **kw) -> HttpSource:
    return HttpSource.model_validate({"type": "http", "url": url, "backoff_s": 0.01, **kw})




def records(chunks: list[Chunk]) -> list[dict]:
    return [r for c in chunks for r in c.rows.to_dict("records")]


RECORDS = [{"question": f"What is Q{i}?", "answer": f"A{i}", "label": i % 2} for i in range(1, 6)]


# Formats -----------------------------------------------------------------------------------------------------------

def test_json_list_comes_back_in_chunks_of_batch_rows(server: Server) -> None:
    url = server.route("/qa.json", Reply(body=json.dumps(RECORDS)))
    chunks = read_all(http_source(url))
    assert [len(c.rows) for c in chunks] == [2, 2, 1]
    assert {c.origin for c in chunks} == {url}
    assert records(chunks) == [{**r, "source_row": i} for i, r in enumerate(RECORDS, 1)]


def test_json_records_path_and_non_object_records(server: Server) -> None:
    body = {"meta": {"n": 3}, "data": {"items": [RECORDS[0], "just a string", RECORDS[1]]}}
    url = server.route("/nested", Reply(body=json.dumps(body)))
    chunks = read_all(http_source(url, records_path="data.items"), batch_rows=10)
    assert [r["question"] for r in records(chunks)] == ["What is Q1?", "What is Q2?"]
    assert [r["source_row"] for r in records(chunks)] == [1, 3]
    assert chunks[0].bad == [{"source_row": 2, "raw": '"just a string"', "reason": "not a JSON object (a str)"}]

    message = read_error(http_source(url, records_path="data.rows"))
    assert "records_path 'data.rows': no key 'rows' at data (items)" in message


def test_json_object_with_one_list_is_used_and_with_two_needs_records_path(server: Server) -> None:
    one = server.route("/one", Reply(body=json.dumps({"results": RECORDS, "next": None})))
    assert len(records(read_all(http_source(one)))) == 5
    two = server.route("/two", Reply(body=json.dumps({"results": RECORDS, "errors": []})))
    assert "set records_path to the dotted key of its list of records (keys holding lists: results, errors)" \
        in read_error(http_source(two))


def test_jsonl_malformed_lines_are_quarantined_with_their_line_number(server: Server) -> None:
    lines = [json.dumps(RECORDS[0]), "{not json", "", json.dumps(RECORDS[1]), "[1, 2]", json.dumps(RECORDS[2])]
    url = server.route("/qa.jsonl", Reply(body="\n".join(lines) + "\n", content_type="application/x-ndjson"))
    chunks = read_all(http_source(url))
    assert [len(c.rows) for c in chunks] == [2, 1]
    assert [r["source_row"] for r in records(chunks)] == [1, 4, 6]
    bad = [b for c in chunks for b in c.bad]
    assert [(b["source_row"], b["raw"]) for b in bad] == [(2, "{not json"), (5, "[1, 2]")]
    assert bad[0]["reason"].startswith("invalid JSON")


def test_csv_values_line_numbers_and_malformed_rows(server: Server) -> None:
    body = 'question,answer\nWhat is MI?,myocardial infarction\n"multi\nline",x\nonly one field\nWhat is BP?,"1,2"\n'
    url = server.route("/qa.csv", Reply(body=body, content_type="text/csv; charset=utf-8"))
    chunks = read_all(http_source(url))
    rows = records(chunks)
    assert rows == [
        {"question": "What is MI?", "answer": "myocardial infarction", "source_row": 2},
        {"question": "multi\nline", "answer": "x", "source_row": 3},
        {"question": "What is BP?", "answer": "1,2", "source_row": 6},
    ]
    assert [len(c.rows) for c in chunks] == [2, 1]
    assert [b for c in chunks for b in c.bad] == [
        {"source_row": 5, "raw": "only one field", "reason": "1 fields, expected 2"}]


def test_csv_charset_from_the_header(server: Server) -> None:
    url = server.route("/latin1.csv", Reply(body="term,meaning\ncafé,coffee\n".encode("latin-1"),
                                            content_type="text/csv; charset=latin-1"))
    assert records(read_all(http_source(url)))[0]["term"] == "café"


HTML = """<!doctype html><html><head><title>MI - Clinical glossary</title>
<style>body { color: red }</style><script>var tracking = "SCRIPT_TEXT";</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<article><h1>Myocardial infarction</h1>
<p>MI stands for myocardial infarction, commonly called a heart attack. It happens when blood flow to part of the
heart muscle is blocked for long enough that the muscle is damaged.</p>
<p>Typical symptoms are chest pain, shortness of breath and sweating; treatment aims to restore blood flow fast.</p>
</article><footer>Copyright 2026 Example Hospital</footer></body></html>"""


def test_html_page_becomes_one_row_of_main_text(server: Server) -> None:
    url = server.route("/mi.html", Reply(body=HTML, content_type="text/html; charset=utf-8"))
    [chunk] = read_all(http_source(url))
    [row] = records([chunk])
    assert set(row) == {"text", "title", "url", "source_row"}
    assert "MI stands for myocardial infarction" in row["text"]
    assert "restore blood flow" in row["text"]
    assert not any(junk in row["text"] for junk in ("SCRIPT_TEXT", "color: red", "<p>", "Copyright 2026"))
    assert row["title"] in {"Myocardial infarction", "MI - Clinical glossary"}  # trafilatura may prefer the <h1>
    assert row["url"] == url


def test_html_page_without_text_is_quarantined_not_fatal(server: Server) -> None:
    empty = server.route("/empty.html", Reply(body="<html><body></body></html>", content_type="text/html"))
    page = server.route("/mi.html", Reply(body=HTML, content_type="text/html"))
    chunks = read_all(http_source([empty, page]))
    assert [c.origin for c in chunks] == [empty, page]
    assert chunks[0].bad[0]["reason"] == "no main text found in the HTML page"
    assert len(chunks[1].rows) == 1


def test_auto_format_from_content_type_and_an_unknown_one(server: Server) -> None:
    as_json = server.route("/a", Reply(body=json.dumps(RECORDS[:1]), content_type="application/json; charset=utf-8"))
    as_csv = server.route("/b", Reply(body="question\nWhat?\n", content_type="text/csv"))
    chunks = read_all(http_source([as_json, as_csv]))
    assert [c.origin for c in chunks] == [as_json, as_csv]
    assert [r["question"] for r in records(chunks)] == ["What is Q1?", "What?"]

    plain = server.route("/c", Reply(body="hello", content_type="text/plain"))
    message = read_error(http_source(plain))
    assert message.startswith(f"data.sources ({plain}): cannot tell the format from Content-Type 'text/plain'")
    assert "set format: json, jsonl, csv or html" in message
    [chunk] = read_all(http_source(plain, format="jsonl"))  # an explicit format wins over the header
    assert chunk.bad[0]["raw"] == "hello"


def test_invalid_json_body_is_one_line(server: Server) -> None:
    url = server.route("/broken", Reply(body="[{", content_type="application/json"))
    assert "not valid JSON" in read_error(http_source(url, name="api"))


# Retries, timeouts, errors -----------------------------------------------------------------------------------------

def test_503_is_retried_with_exponential_backoff_then_succeeds(server: Server) -> None:
    url = server.route("/flaky", Reply(503), Reply(503), Reply(503), Reply(body=json.dumps(RECORDS)))
    chunks = read_all(http_source(url, retries=3, backoff_s=0.05))
    assert len(records(chunks)) == 5
    assert server.count("/flaky") == 4
    gaps = [b - a for a, b in pairwise(server.hits["/flaky"])]
    assert [g >= expected for g, expected in zip(gaps, [0.05, 0.1, 0.2], strict=True)] == [True] * 3, gaps


def test_404_is_requested_once_and_fails(server: Server) -> None:
    url = server.route("/missing", Reply(404))
    message = read_error(http_source(url, retries=3))
    assert message == f"data.sources ({url}): HTTP 404 Not Found; check the URL"
    assert server.count("/missing") == 1


def test_5xx_until_retries_run_out(server: Server) -> None:
    url = server.route("/down", Reply(500))
    message = read_error(http_source(url, retries=2, name="glossary"))
    assert message.startswith(f"data.sources (glossary {url}): failed after 3 attempt(s)")
    assert message.endswith("last error: HTTP 500 Internal Server Error")
    assert server.count("/down") == 3


def test_timeout_is_retried(server: Server) -> None:
    url = server.route("/slow", Reply(delay_s=1.0, body="[]"), Reply(body=json.dumps(RECORDS)))
    started = time.monotonic()
    chunks = read_all(http_source(url, timeout_s=0.2, retries=1))
    assert len(records(chunks)) == 5
    assert server.count("/slow") == 2
    assert time.monotonic() - started < 0.9  # gave up on the slow answer instead of waiting for it


def test_timeouts_until_retries_run_out(server: Server) -> None:
    url = server.route("/stalled", Reply(delay_s=1.0))
    message = read_error(http_source(url, timeout_s=0.2, retries=1))
    assert "failed after 2 attempt(s)" in message and "timeout_s: 0.2" in message
    assert "last error: ReadTimeout" in message


def test_connection_refused_is_retried_then_one_line() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = read_error(http_source(f"http://127.0.0.1:{port}/x", retries=1))
    assert message.startswith(f"data.sources (http://127.0.0.1:{port}/x): failed after 2 attempt(s)")
    assert "ConnectionError" in message


# Headers and secrets -----------------------------------------------------------------------------------------------

def bearer_route(server: Server, token: str) -> str:
    def check(_n: int, headers: dict[str, str]) -> Reply:
        ok = headers.get("Authorization") == f"Bearer {token}"
        return Reply(body=json.dumps(RECORDS)) if ok else Reply(401, body='{"error": "bad token"}')

    server.routes["/private"] = check
    return server.base + "/private"


def test_header_placeholders_are_resolved(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    url = bearer_route(server, "s3cret-token")
    monkeypatch.setenv("FTFLOW_TEST_TOKEN", "s3cret-token")
    source = http_source(url, headers={"Authorization": "Bearer ${env:FTFLOW_TEST_TOKEN}"})
    assert len(records(read_all(source))) == 5


def test_rejected_token_never_shows_up(server: Server, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 logs every request at DEBUG
    url = bearer_route(server, "the-right-token")
    monkeypatch.setenv("FTFLOW_TEST_TOKEN", "wrong-token-4711")
    with pytest.raises(DataError) as info:
        read_all(http_source(url, headers={"Authorization": "Bearer ${env:FTFLOW_TEST_TOKEN}"}, retries=2))
    assert str(info.value) == f"data.sources ({url}): HTTP 401 Unauthorized; check the headers (credentials)"
    assert server.count("/private") == 1
    printed = "".join(traceback.format_exception(info.value))
    assert all("wrong-token-4711" not in out for out in (printed, caplog.text, *capfd.readouterr()))


def test_unset_header_variable_is_named(server: Server) -> None:
    url = server.route("/any", Reply(body="[]"))
    message = read_error(http_source(url, headers={"X-Key": "${env:FTFLOW_TEST_UNSET_KEY}"}))
    assert "FTFLOW_TEST_UNSET_KEY is not set" in message and url in message
    assert server.count("/any") == 0
