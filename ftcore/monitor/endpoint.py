"""A client of the serving endpoint's HTTP API (docs/serving.md), for the monitor's probes and canaries: it asks
as any client would, so what it measures is what users get."""

from __future__ import annotations

import base64
import mimetypes
import os
from pathlib import Path

import requests

from ftcore.columns import IMAGE_PLACEHOLDER
from ftcore.data.images import content_parts
from ftcore.serving.config import TOKEN_ENV

CLASSIFIER = "classifier"


class EndpointError(Exception):
    """A request the endpoint did not answer (refused connection, timeout, an error status)."""


class Endpoint:
    """`base_url` as served (`http://host:port`); the bearer token is `token`, else $FTFLOW_SERVE_TOKEN when set."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0):
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s
        token = token or os.environ.get(TOKEN_ENV)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def health(self) -> dict:
        """`{status, model, version, kind}`: kind is causal or classifier."""
        return self._call("GET", "/health")

    def complete(self, prompt: str, max_tokens: int) -> str:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return self._call("POST", "/v1/completions", body)["choices"][0]["text"]

    def chat(self, messages: list[dict], max_tokens: int) -> str:
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        return self._call("POST", "/v1/chat/completions", body)["choices"][0]["message"]["content"]

    def classify(self, text: str) -> str:
        return str(self._call("POST", "/v1/classify", {"input": text})["data"][0]["label"])

    def ask(self, kind: str, question: str, prompt_template: str | None, max_tokens: int,
            image: Path | None = None) -> str:
        """A question as a user would ask it: about an image, a chat's user turn with the image before the text (as
        image_text datasets place it); else a text to classify (a classifier's endpoint), a completion prompt
        written with the recipe's prompt template (as the model was trained), or without a template a chat's user
        turn."""
        if image is not None:
            return self.chat(image_chat([{"role": "user", "content": IMAGE_PLACEHOLDER + question}], [image]),
                             max_tokens)
        if kind == CLASSIFIER:
            return self.classify(question)
        if prompt_template is None:
            return self.chat([{"role": "user", "content": question}], max_tokens)
        return self.complete(prompt_template.replace("{prompt}", question), max_tokens)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = requests.request(method, self.base_url + path, json=body, headers=self.headers,
                                        timeout=self.timeout_s)
        except requests.RequestException as e:
            raise EndpointError(f"{method} {path}: {type(e).__name__}") from None
        if response.status_code >= 400:
            raise EndpointError(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
        try:
            return response.json()
        except ValueError:  # requests' JSONDecodeError is one
            raise EndpointError(f"{method} {path}: the answer is not JSON") from None


def image_chat(messages: list[dict], images: list[str | Path]) -> list[dict]:
    """A chat with image placeholders (an image_text row's) as a client sends it: content parts, the n-th
    placeholder the n-th image, inline as a data: URL."""
    urls = iter([data_url(Path(path)) for path in images])
    return [{"role": m["role"], "content": [part if part["type"] == "text" else
                                            {"type": "image_url", "image_url": {"url": next(urls)}}
                                            for part in content_parts(m["content"])]} for m in messages]


def data_url(path: Path) -> str:
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"  # the server refuses a non-image
    return f"data:{media};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
