"""Canaries: questions with known answers (`monitor.canaries`, JSONL of {"question", "answer"}) asked of the live
endpoint at monitor time. They catch what latency and error counts cannot: an endpoint that answers quickly and
wrongly (a bad reload, the wrong version behind an alias, a broken tokenizer).

An answer is right when the expected answer, normalised as SQuAD does (lowercase, no punctuation, no articles, one
space between words), appears in the normalised output as a whole run of words: "myocardial infarction" is found
in "MI stands for myocardial infarction." but not in "myocardial". Containment rather than exact match, because a
served model may phrase an answer in a sentence; a classifier's label is compared the same way. A request that
fails counts as a wrong answer: an endpoint that cannot answer its canaries is failing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftcore.data.config import DataConfig
from ftcore.errors import UserError
from ftcore.monitor.endpoint import Endpoint, EndpointError
from ftcore.progress import progress_bar
from ftcore.text_metrics import normalize_answer


@dataclass(frozen=True)
class Canary:
    question: str
    answer: str


@dataclass(frozen=True)
class CanaryResult:
    question: str
    expected: str
    output: str | None
    error: str | None

    @property
    def correct(self) -> bool:
        return self.output is not None and answers(self.output, self.expected)


def load_canaries(path: Path) -> list[Canary]:
    """The canaries of a JSONL file; a bad line is a one-line error naming the file and line."""
    canaries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            canary = Canary(question=str(row["question"]), answer=str(row["answer"]))
        except (ValueError, KeyError, TypeError):
            raise UserError(f"monitor.canaries: {path} line {number}: expected a JSON object with \"question\" and "
                            "\"answer\"") from None
        if not normalize_answer(canary.answer):
            raise UserError(f"monitor.canaries: {path} line {number}: the answer has no words; an empty answer "
                            "would match any output")
        canaries.append(canary)
    if not canaries:
        raise UserError(f"monitor.canaries: {path} has no canary; add {{\"question\": ..., \"answer\": ...}} lines")
    return canaries


def question_template(data: DataConfig) -> str | None:
    """How a canary is written for the recipe's model: with its prompt template, or none for a chat model (asked
    through the chat endpoint, whose template the server applies)."""
    return None if data.format == "messages" else data.prompt_template


def answers(output: str, expected: str) -> bool:
    """Whether the normalised `expected` is a whole run of words of the normalised `output`."""
    return f" {normalize_answer(expected)} " in f" {normalize_answer(output)} "


def ask_canaries(endpoint: Endpoint, canaries: list[Canary], prompt_template: str | None,
                 max_tokens: int) -> list[CanaryResult]:
    """Each canary asked once, greedily: classified when the endpoint serves a classifier (its /health), else as a
    completion written with `prompt_template`, or as a chat turn when there is none (a chat model). A terminal
    shows the canaries asked of the total."""
    try:
        kind = endpoint.health()["kind"]
    except (EndpointError, KeyError, TypeError) as e:
        return [CanaryResult(c.question, c.answer, None, f"health: {e}") for c in canaries]
    results = []
    with progress_bar(len(canaries), "asking the canaries", unit="requests") as bar:
        for canary in canaries:
            try:
                output, error = endpoint.ask(kind, canary.question, prompt_template, max_tokens), None
            except (EndpointError, KeyError, IndexError, TypeError) as e:  # a malformed answer is a failed one too
                output, error = None, f"{type(e).__name__}: {e}"
            results.append(CanaryResult(canary.question, canary.answer, output, error))
            bar.update()
    return results


def canary_accuracy(results: list[CanaryResult]) -> float | None:
    return sum(r.correct for r in results) / len(results) if results else None
