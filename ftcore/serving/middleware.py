"""The ASGI layers every request passes before a handler, outermost first:

1. `RecordRequests` times each request and records it (metrics, request log) whatever becomes of it. A client that
   leaves before its answer is recorded as 499, not as a server error, and its handler is cancelled.
2. `Authenticate` checks the bearer token before a byte of the body is read.
3. `ReadBody` reads the body whole, within `limits.body_timeout_s` (408) and `limits.max_body_bytes` (413), once
   the API has been told it is JSON (415).

The request line and headers are bounded lower down (ftcore/serving/protocol.py): no ASGI code runs before they
are complete."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable

from ftcore.serving.errors import send_error
from ftcore.serving.request_log import CLIENT_CLOSED

log = logging.getLogger("ftflow.serve")


def is_api(path: str) -> bool:
    return path.startswith("/v1/")


def is_admin(path: str) -> bool:
    return path.startswith("/admin/")


def needs_token(path: str) -> bool:
    """The API and the metrics; /health stays open for load balancers' probes."""
    return is_api(path) or path == "/metrics"


def is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class Exchange:
    """One request's messages as they pass: the status sent, and whether the client left before it."""

    def __init__(self, receive, send):
        self._receive, self._send = receive, send
        self.status: int | None = None
        self.client_left = False
        self._body_read = asyncio.Event()

    async def receive(self):
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.client_left = self.client_left or self.status is None
        elif not message.get("more_body", False):
            self._body_read.set()
        return message

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)

    async def until_client_leaves(self) -> None:
        """Returns when the client disconnects before its answer has started. Once the body is read, the next
        message from the server can only say the connection ended: the client left, or the answer was sent."""
        await self._body_read.wait()
        if (await self._receive())["type"] == "http.disconnect" and self.status is None:
            self.client_left = True
            return
        await asyncio.Event().wait()  # the answer went out: nothing left to watch for


class RecordRequests:
    """Times every request; `record(scope, status, latency_s)` is called for each once it is over. An exception no
    handler expected becomes a 500 JSON error with the traceback in the server's log: the server goes on."""

    def __init__(self, app, record: Callable[[dict, int, float], None]):
        self.app, self.record = app, record

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        scope.setdefault("state", {})["started"] = started  # for the time to a streamed answer's first token
        exchange = Exchange(receive, send)
        try:
            await self._answer(scope, exchange)
            if exchange.status is None and not exchange.client_left:
                raise RuntimeError("the app returned without an answer")
        except Exception as e:  # one bad request must never take the server down
            log.exception("request to %s failed", scope["path"])
            scope.setdefault("state", {})["error"] = f"{type(e).__name__}: {e}"
            if exchange.status is None:
                await send_error(exchange.send, 500, f"internal error ({type(e).__name__}); the server logged it",
                                 "server_error")
        left = exchange.client_left or exchange.status is None
        self.record(scope, CLIENT_CLOSED if left else exchange.status, time.perf_counter() - started)

    async def _answer(self, scope, exchange: Exchange) -> None:
        """Runs the app; when the client leaves first, cancels it (its queued model work is then skipped)."""
        handler = asyncio.ensure_future(self.app(scope, exchange.receive, exchange.send))
        watcher = asyncio.ensure_future(exchange.until_client_leaves())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is shutting down: the handler goes with this task
            handler.cancel()
            raise
        finally:
            watcher.cancel()
        if exchange.client_left and not handler.done():
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
            return
        await handler


class Authenticate:
    """With a token, refuses a request to the API or the metrics without `Authorization: Bearer <token>` (401),
    before its body is read. The admin routes (`/admin/`) take the admin token only, on loopback too; without one
    they are off (403)."""

    def __init__(self, app, token: str | None, admin_token: str | None = None):
        self.app, self.token, self.admin_token = app, token, admin_token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if is_admin(scope["path"]):
            if self.admin_token is None:
                return await self._refuse(scope, send, 403, "the admin routes are off: start the server with "
                                                            "--admin-token or $FTFLOW_ADMIN_TOKEN", "admin_disabled")
            if not self._carries(scope, self.admin_token):
                return await self._refuse(scope, send, 401, "missing or wrong admin token: send the header "
                                                            "'Authorization: Bearer <admin token>'", "invalid_token")
        elif self.token is not None and needs_token(scope["path"]) and not self._carries(scope, self.token):
            return await self._refuse(scope, send, 401, "missing or wrong bearer token: send the header "
                                                        "'Authorization: Bearer <token>'", "invalid_token")
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope, send, status: int, message: str, code: str) -> None:
        scope.setdefault("state", {})["error"] = message
        kind = "authentication_error" if status == 401 else "permission_error"
        await send_error(send, status, message, kind, code=code,
                         headers=[(b"www-authenticate", b"Bearer")] if status == 401 else None)

    @staticmethod
    def _carries(scope, token: str) -> bool:
        value = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token.encode())


class ReadBody:
    """Reads the body before any handler sees it, so that a slow or oversized one is refused here: over
    `max_bytes` (413, from Content-Length when sent, else counted as a chunked body arrives), or not complete
    `timeout_s` after the headers (408). A POST to the API must say its body is JSON (415). A client that leaves
    meanwhile gets no answer."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and is_api(scope["path"]) and not is_json(headers.get(b"content-type")):
            given = headers.get(b"content-type")
            shown = "missing" if given is None else f"{given.decode('latin-1')!r} is not JSON"
            return await self._refuse(scope, send, 415, f"content-type: {shown}; send the header 'Content-Type: "
                                                        "application/json'", "invalid_request_error",
                                      "unsupported_media_type", param="content-type")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, send, int(declared))
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body, more = bytearray(), True
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await self._refuse(scope, send, 408, f"the request body was not complete within "
                                                            f"{self.timeout_s:g} s (limits.body_timeout_s)",
                                          "request_timeout", "body_timeout")
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, send, len(body))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, send, size: int) -> None:
        await self._refuse(scope, send, 413, f"the request body has {size} bytes or more; the limit is "
                                             f"{self.max_bytes} (limits.max_body_bytes)", "request_too_large",
                           "body_too_large")

    @staticmethod
    async def _refuse(scope, send, status: int, message: str, type_: str, code: str,
                      param: str | None = None) -> None:
        scope.setdefault("state", {})["error"] = message
        # The rest of the body is never read, so the connection cannot carry another request.
        await send_error(send, status, message, type_, param, code, headers=[(b"connection", b"close")])
