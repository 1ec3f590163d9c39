"""Errors as the API returns them: `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape), and the body
size limit, enforced before a handler reads the body."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A request the server refuses, with the status and the message the client sees."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_response(status: int, message: str, type_: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status)


def validation_message(errors: list[dict]) -> tuple[str, str | None, str]:
    """FastAPI's validation errors as one line: the body is not JSON, or which fields are wrong and why."""
    if any(e["type"] == "json_invalid" for e in errors):
        detail = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({detail})", None, "invalid_json"
    problems, params = [], []
    for e in errors:
        loc = [str(p) for p in e["loc"] if p != "body"]
        # A union (str | list[str]) reports each branch; the field and the first reason are enough.
        field = ".".join(p for p in loc if p != "str" and not p.startswith(("list[", "function-")))
        if field in params:
            continue
        params.append(field)
        problems.append(f"{field or 'body'}: {e['msg']}")
    return "; ".join(problems), (params[0] or None) if params else None, "invalid_field"


class BodyLimit:
    """Refuses a body over `max_bytes` with 413 before any handler sees it: from Content-Length when sent, else by
    counting a chunked body as it arrives (read here, then handed on)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, int(declared))
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(send, len(body))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size: int) -> None:
        payload = json.dumps({"error": {
            "message": f"the request body has {size} bytes or more; the limit is {self.max_bytes} "
                       "(limits.max_body_bytes)", "type": "request_too_large", "param": None,
            "code": "body_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
