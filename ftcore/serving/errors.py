"""Errors as the API returns them: `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape), from the
handlers, the ASGI layers before them (ftcore/serving/middleware.py) and the HTTP protocol below them."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A request the server refuses, with the status and the message the client sees."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


async def send_error(send, status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """The error as a whole ASGI response, for the layers that answer before any handler runs."""
    payload = json.dumps(error_body(message, type_, param, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


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
