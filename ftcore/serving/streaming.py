"""Streamed answers (`"stream": true`): server-sent events in OpenAI's chunk format, a chunk per piece of text as the
decode loop chooses tokens, then the finish reason, the usage when asked (`stream_options.include_usage`) and
`data: [DONE]`.

A piece of text is never taken back: a token that ends inside a multi-byte character waits for the next, and text
that may be the start of a stop string waits until it is clear it is not one. So the pieces put together are the
answer a request without `stream` gets.

A client that stops reading holds only its own tokens (at most its max_tokens) and the socket's buffers: when a
chunk cannot be sent within `limits.stream_stall_s`, its stream is closed and counted
(`ftflow_streams_closed{reason="stalled"}`), and its row leaves the decode batch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Literal

from starlette.responses import StreamingResponse

DONE = b"data: [DONE]\n\n"


def event(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


class TextStream:
    """The text of a growing answer, handed out in pieces that later tokens never change."""

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.tokens: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        """The new text that `token` makes certain ("" while it is not)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character whose remaining bytes are in the next token
            return ""
        end = min([len(text), *(self._stop_at(text, stop) for stop in self.stops)])
        return self._send(text[:end])

    def rest(self, answer: str) -> str:
        """What is left to send of the finished answer."""
        return self._send(answer)

    def _send(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""  # nothing new (a tokenizer that rewrote earlier text keeps what was sent)
        piece, self.sent = text[len(self.sent):], text
        return piece

    @staticmethod
    def _stop_at(text: str, stop: str) -> int:
        """Where `text` must end for now: before the stop string, or before its end that may begin one."""
        if (at := text.find(stop)) >= 0:
            return at
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return len(text) - k
        return len(text)


class Chunks:
    """The chunks of one streamed answer, as OpenAI writes them for completions or for chats."""

    def __init__(self, kind: Literal["completion", "chat"], id_: str, created: int, model: str, version: str,
                 include_usage: bool):
        self.kind, self.include_usage = kind, include_usage
        self.head = {"id": id_, "object": "text_completion" if kind == "completion" else "chat.completion.chunk",
                     "created": created, "model": model, "model_version": version}

    def opening(self) -> list[bytes]:
        """A chat stream first says who speaks."""
        return [self._chunk({"role": "assistant", "content": ""})] if self.kind == "chat" else []

    def piece(self, text: str) -> bytes:
        return self._chunk({"content": text} if self.kind == "chat" else text)

    def finish(self, reason: str, usage: dict) -> list[bytes]:
        ending = [self._chunk({} if self.kind == "chat" else "", reason)]
        if self.include_usage:
            ending.append(event({**self.head, "choices": [], "usage": usage}))
        return [*ending, DONE]

    def _chunk(self, delta: dict | str, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, ("delta" if self.kind == "chat" else "text"): delta, "logprobs": None,
                  "finish_reason": finish_reason}
        return event({**self.head, "choices": [choice], **({"usage": None} if self.include_usage else {})})


class Stalled(Exception):
    """The client took no chunk within the stall bound."""


class EventStream(StreamingResponse):
    """A text/event-stream response whose every chunk must be taken by the client within `stall_s`. `on_end(how)`
    runs once the response is over, however it ended: "done", "stalled" or "closed" (the client went away, or the
    server stopped)."""

    def __init__(self, events: AsyncIterator[bytes], stall_s: float,
                 on_end: Callable[[Literal["done", "stalled", "closed"]], None]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.stall_s, self.on_end = stall_s, on_end
        self.finished = False

    async def stream_response(self, send) -> None:
        async def bounded(message) -> None:
            try:
                async with asyncio.timeout(self.stall_s):
                    await send(message)
            except TimeoutError:
                raise Stalled from None
            if not message.get("more_body", True):
                self.finished = True

        await super().stream_response(bounded)

    async def __call__(self, scope, receive, send) -> None:
        how: Literal["done", "stalled", "closed"] = "closed"
        try:
            await super().__call__(scope, receive, send)
            how = "done" if self.finished else "closed"
        except Stalled:  # returning with the answer unfinished makes uvicorn close the connection
            how = "stalled"
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.on_end(how)
