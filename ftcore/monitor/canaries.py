"""Canaries: questions with known answers (`monitor.canaries`, JSONL of {"question", "answer"}, and "image", a
picture's path relative to the file, for a question about it) asked of the live endpoint at monitor time. They
catch what latency and error counts cannot: an endpoint that answers quickly and wrongly (a bad reload, the wrong
version behind an alias, a broken tokenizer).

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
from ftcore.hashing import hash_file, hash_obj
from ftcore.monitor.endpoint import Endpoint, EndpointError
from ftcore.progress import progress_bar
from ftcore.text_metrics import normalize_answer


@dataclass(frozen=True)
class Canary:
    question: str
    answer: str
    image: Path | None = None


@dataclass(frozen=True)
class CanaryResult:
    question: str
    expected: str
    output: str | None
    error: str | None
    image: str | None = None  # the file name of the picture asked about

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
            image = row.get("image")
            canary = Canary(question=str(row["question"]), answer=str(row["answer"]),
                            image=None if image is None else Path(path).parent / str(image))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"monitor.canaries: {path} line {number}: expected a JSON object with \"question\" and "
                            "\"answer\"") from None
        if canary.image is not None and not canary.image.is_file():
            raise UserError(f"monitor.canaries: {path} line {number}: image {canary.image} not found; give the "
                            "picture's path relative to the canary file")
        if not normalize_answer(canary.answer):
            raise UserError(f"monitor.canaries: {path} line {number}: the answer has no words; an empty answer "
                            "would match any output")
        canaries.append(canary)
    if not canaries:
        raise UserError(f"monitor.canaries: {path} has no canary; add {{\"question\": ..., \"answer\": ...}} lines")
    return canaries


def canaries_fingerprint(path: Path) -> str:
    """The canaries' content: the file and the pictures it names, so that a replaced picture is asked again. Read
    leniently (it keys the cache; load_canaries judges the file when the stage runs)."""
    pictures = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        image = Path(path).parent / str(row["image"]) if isinstance(row, dict) and row.get("image") else None
        if image is not None and image.is_file():
            pictures.append(hash_file(image))
    return hash_obj([hash_file(path), *pictures])


def question_template(data: DataConfig) -> str | None:
    """How a canary is written for the recipe's model: with its prompt template, or none for a chat model, one
    trained on chats or on chats about images (asked through the chat endpoint, whose template the server
    applies)."""
    return None if data.format in ("messages", "image_text") else data.prompt_template


def answers(output: str, expected: str) -> bool:
    """Whether the normalised `expected` is a whole run of words of the normalised `output`."""
    return f" {normalize_answer(expected)} " in f" {normalize_answer(output)} "


def ask_canaries(endpoint: Endpoint, canaries: list[Canary], prompt_template: str | None,
                 max_tokens: int) -> list[CanaryResult]:
    """Each canary asked once, greedily: classified when the endpoint serves a classifier (its /health), else as a
    completion written with `prompt_template`, or as a chat turn when there is none (a chat model); a canary with
    an image as a chat turn holding it (`Endpoint.ask`). A terminal shows the canaries asked of the total."""
    try:
        kind = endpoint.health()["kind"]
    except (EndpointError, KeyError, TypeError) as e:
        return [CanaryResult(c.question, c.answer, None, f"health: {e}", _name(c.image)) for c in canaries]
    results = []
    with progress_bar(len(canaries), "asking the canaries", unit="requests") as bar:
        for canary in canaries:
            try:
                output = endpoint.ask(kind, canary.question, prompt_template, max_tokens, canary.image)
                error = None
            except (EndpointError, KeyError, IndexError, TypeError) as e:  # a malformed answer is a failed one too
                output, error = None, f"{type(e).__name__}: {e}"
            results.append(CanaryResult(canary.question, canary.answer, output, error, _name(canary.image)))
            bar.update()
    return results


def _name(image: Path | None) -> str | None:
    return None if image is None else image.name


def canary_accuracy(results: list[CanaryResult]) -> float | None:
    return sum(r.correct for r in results) / len(results) if results else None
