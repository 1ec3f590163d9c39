"""HTTP(S) URLs as a source: JSON, JSON Lines, CSV or HTML pages, with timeouts and retries.

Connection errors, timeouts and 5xx answers are retried with exponential backoff (they are often transient); a 4xx
is not (asking again gets the same answer). Each response body is downloaded whole inside the retry loop, so an
interrupted download is retried too, and then split into chunks of at most `batch_rows` rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.message import Message
from typing import Any

import requests

from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import HttpSource
from ftcore.data.sources.parse import RAW_CHARS, bad_row, csv_chunks, frame_of, jsonl_chunks, record_chunks, text_lines
from ftcore.data.sources.secrets import resolve
from ftcore.errors import DataError, first_line

# Content-Type media types for `format: auto`.
MEDIA_TYPES = {
    "application/json": "json",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "text/csv": "csv",
    "text/html": "html",
    "application/xhtml+xml": "html",
}


def read_http(source: HttpSource, batch_rows: int) -> Iterator[Chunk]:
    headers = _headers(source)
    with requests.Session() as session:
        for url in source.urls():
            where = f"data.sources ({source.name} {url})" if source.name else f"data.sources ({url})"
            response = _get(session, url, headers, source, where)
            fmt = source.format if source.format != "auto" else _format_from_content_type(response, where)
            yield from _PARSERS[fmt](response, source, batch_rows, url, where)


def _headers(source: HttpSource) -> dict[str, str]:
    try:
        return {name: resolve(value.get_secret_value()) for name, value in source.headers.items()}
    except DataError as e:
        raise DataError(f"data.sources ({source.label()}) headers: {e}") from None


def _get(session: requests.Session, url: str, headers: dict[str, str], source: HttpSource,
         where: str) -> requests.Response:
    attempts = source.retries + 1
    last_error = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(source.backoff_s * 2 ** (attempt - 1))
        try:
            response = session.get(url, headers=headers, timeout=source.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as e:
            last_error = f"{type(e).__name__}: {first_line(e)}"
            continue
        if response.status_code >= 500:
            last_error = f"HTTP {response.status_code} {response.reason}"
            continue
        if response.status_code >= 400:
            hint = "check the headers (credentials)" if response.status_code in (401, 403) else "check the URL"
            raise DataError(f"{where}: HTTP {response.status_code} {response.reason}; {hint}")
        return response
    raise DataError(f"{where}: failed after {attempts} attempt(s) (retries: {source.retries}, timeout_s: "
                    f"{source.timeout_s}); last error: {last_error}")


def _format_from_content_type(response: requests.Response, where: str) -> str:
    content_type = response.headers.get("Content-Type", "")
    media_type = content_type.split(";")[0].strip().lower()
    fmt = MEDIA_TYPES.get(media_type) or ("json" if media_type.endswith("+json") else None)
    if fmt is None:
        raise DataError(f"{where}: cannot tell the format from Content-Type {content_type or '(none)'!r}; set "
                        f"format: json, jsonl, csv or html")
    return fmt


def _text(response: requests.Response, where: str) -> str:
    """The body as text: the charset the server names, else UTF-8 (requests' own default for text/* is Latin-1)."""
    header = Message()
    header["Content-Type"] = response.headers.get("Content-Type", "")
    charset = str(header.get_param("charset") or "utf-8")
    try:
        return response.content.decode(charset).removeprefix("\ufeff")
    except (UnicodeDecodeError, LookupError) as e:
        raise DataError(f"{where}: the body is not valid {charset}: {e}") from None


def _read_json(response: requests.Response, source: HttpSource, batch_rows: int, url: str,
               where: str) -> Iterator[Chunk]:
    try:
        body = json.loads(_text(response, where))
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON: {e}; set format if the server's Content-Type is wrong") from None
    except RecursionError:
        raise DataError(f"{where}: the JSON body is nested too deeply to read") from None
    yield from record_chunks(_records(body, source.records_path, where), url, batch_rows)


def _records(body: Any, records_path: str | None, where: str) -> list:
    if records_path:
        node = body
        for i, key in enumerate(records_path.split(".")):
            if not isinstance(node, dict) or key not in node:
                at = ".".join(records_path.split(".")[:i]) or "the top level"
                keys = ", ".join(node) if isinstance(node, dict) else f"a {type(node).__name__}, not an object"
                raise DataError(f"{where}: records_path {records_path!r}: no key {key!r} at {at} ({keys})")
            node = node[key]
        if not isinstance(node, list):
            raise DataError(f"{where}: records_path {records_path!r} holds a value of type {type(node).__name__}, "
                            f"not a list of records")
        return node
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        lists = [key for key, value in body.items() if isinstance(value, list)]
        if len(lists) == 1:  # e.g. {"data": [...], "next": null}: the one list is the records
            return body[lists[0]]
        found = f"keys holding lists: {', '.join(lists)}" if lists else f"keys: {', '.join(body) or 'none'}"
        raise DataError(f"{where}: the JSON body is an object; set records_path to the dotted key of its list of "
                        f"records ({found})")
    raise DataError(f"{where}: the JSON body is of type {type(body).__name__}; expected a list of records or an "
                    f"object holding one")


def _read_jsonl(response: requests.Response, source: HttpSource, batch_rows: int, url: str,
                where: str) -> Iterator[Chunk]:
    yield from jsonl_chunks(enumerate(text_lines([_text(response, where)]), 1), url, batch_rows)


def _read_csv(response: requests.Response, source: HttpSource, batch_rows: int, url: str,
              where: str) -> Iterator[Chunk]:
    text = _text(response, where)
    if not text.strip():
        raise DataError(f"{where}: the CSV body is empty; expected a header row")
    try:
        yield from csv_chunks(enumerate(text_lines([text]), 1), url, batch_rows)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None


def _read_html(response: requests.Response, source: HttpSource, batch_rows: int, url: str,
               where: str) -> Iterator[Chunk]:
    import trafilatura  # imported here: it is slow to import and only HTML sources need it

    # The page's main text without navigation, footers, scripts and styles; trafilatura detects the encoding.
    document = trafilatura.bare_extraction(response.content, url=url, with_metadata=True)
    if document is None or not document.text:  # one empty page is quarantined; the source's other URLs still count
        raw = response.content[:RAW_CHARS].decode("utf-8", errors="replace")
        yield Chunk(rows=frame_of([]), origin=url, bad=[bad_row(1, raw, "no main text found in the HTML page")])
        return
    yield Chunk(rows=frame_of([{"text": document.text, "title": document.title or "", "url": url, ROW_ID: 1}]),
                origin=url)


_PARSERS = {"json": _read_json, "jsonl": _read_jsonl, "csv": _read_csv, "html": _read_html}
