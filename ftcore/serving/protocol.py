"""uvicorn's HTTP protocol with a bound on the request line and headers, and JSON errors. uvicorn waits for the
headers forever, so a client that opens connections and sends headers slowly (or never) holds them open for as long
as it likes. The bound runs from the connection's start, and from the end of each answer on a kept-alive
connection, until the next request's headers are complete; the body is bounded once they are
(ftcore/serving/middleware.py: ReadBody). A request that is not HTTP gets a JSON 400, not uvicorn's plain text."""

from __future__ import annotations

import asyncio
import json
from functools import partial

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from ftcore.serving.errors import error_body


class ServingProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    def __init__(self, *args, header_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_headers()

    def connection_lost(self, exc) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        """Start the clock on the next request's headers. uvicorn makes a new request cycle once they are complete,
        so the cycle that is current now tells whether they came in time."""
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue, self.cycle)

    def _headers_overdue(self, cycle) -> None:
        waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)  # not busy with a request
        if not waiting or self.transport.is_closing():
            return
        self._refuse(b"408 Request Timeout", f"the request line and headers were not complete within "
                                             f"{self.header_timeout_s:g} s (limits.header_timeout_s)",
                     "request_timeout", "header_timeout")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not an HTTP request (a bad request line, header or Content-Length)."""
        self._refuse(b"400 Bad Request", f"not an HTTP/1.1 request ({msg.rstrip('.')})", "invalid_request_error",
                     "invalid_http")

    def _refuse(self, status: bytes, message: str, type_: str, code: str) -> None:
        payload = json.dumps(error_body(message, type_, code=code)).encode()
        self.transport.write(b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, len(payload), payload))
        self.transport.close()


def serving_protocol(header_timeout_s: float):
    """The protocol class to hand uvicorn (`uvicorn.Config(http=...)`)."""
    return partial(ServingProtocol, header_timeout_s=header_timeout_s)
