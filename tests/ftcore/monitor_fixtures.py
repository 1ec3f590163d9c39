"""Helpers of the monitor tests: the demo's questions, request-log frames, planted traffic, canary files, and a
loopback server speaking the serving endpoint's HTTP contract."""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from pathlib import Path

import pandas as pd

from ftcore.serving.request_log import COLUMNS, RequestRecord
from tests.conftest import DEMO_RECIPE
from tests.loopback import QuietHandler, serve

DEMO = DEMO_RECIPE.parent.parent / "demo"
TEMPLATE = "Question: {prompt}\nAnswer:"


def demo_prompts() -> list[str]:
    """The demo's questions as the model is asked them, shuffled the same way every time."""
    rows = pd.read_json(DEMO / "clinical_qa.jsonl", lines=True)
    questions = rows["question"].str.strip().drop_duplicates().sample(frac=1.0, random_state=0)
    return [TEMPLATE.replace("{prompt}", q) for q in questions]


def window(records: list[dict]) -> pd.DataFrame:
    """A request-log frame of `records` (RequestRecord fields; the rest defaulted)."""
    now = time.time()
    full = [RequestRecord(**{"ts": now, "model": "m", "version": "1", "endpoint": "completions", "status": 200,
                             "latency_s": 0.1, **r}) for r in records]
    return pd.DataFrame([[getattr(r, c) for c in COLUMNS] for r in full], columns=COLUMNS)


def planted_window() -> pd.DataFrame:
    """30 requests over ten minutes: the demo's questions, 6 of them slow and 4 answered rudely."""
    prompts, start = demo_prompts(), time.time() - 600
    return window([{"ts": start + 20 * i, "input": prompts[i], "latency_s": 3.5 if i % 5 == 0 else 0.05,
                    "output": "you idiot" if i % 7 == 3 else "blood pressure"} for i in range(30)])


class FakeEndpoint(QuietHandler):
    """The serving endpoint's HTTP contract, answering from `answers` (prompt or user turn -> text); `kind` and
    `failing` (paths answered 500) are set per server."""

    kind, answers, failing = "causal", {}, frozenset()

    def do_GET(self):
        self._reply(200, {"status": "ok", "model": "clinical-qa", "version": "1", "kind": self.kind})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path in self.failing:
            return self._reply(500, {"error": {"message": "boom"}})
        if self.path == "/v1/completions":
            return self._reply(200, {"choices": [{"text": self.answers.get(body["prompt"], "no idea")}]})
        if self.path == "/v1/chat/completions":
            text = self.answers.get(body["messages"][-1]["content"], "no idea")
            return self._reply(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
        return self._reply(200, {"data": [{"label": self.answers.get(body["input"], "ham"), "scores": {}}]})

    def _reply(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def fake_endpoint(answers: dict[str, str], kind: str = "causal",
                  failing: frozenset = frozenset()) -> AbstractContextManager[str]:
    """A loopback FakeEndpoint; entering it gives its base URL."""
    handler = type("Handler", (FakeEndpoint,), {"answers": answers, "kind": kind, "failing": failing})
    return serve(handler)


def canaries_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows), encoding="utf-8")
    return path


CANARIES = [("What does MI stand for?", "myocardial infarction"), ("Spell out BP.", "blood pressure"),
            ("What does COPD mean?", "chronic obstructive pulmonary disease")]
