"""Augmenters: edits of the train split's inputs for low-resource data. Built in: EDA-style word edits (synonym
replacement, random swap, random deletion; Wei & Zou 2019); data engineers register their own (back-translation,
paraphrasing). Which rows get variants, and how many: `augment_rows` in ftcore/data/balance.py.

Only a row's input is edited, never what the model is trained to produce (AUGMENTED_COLUMNS): the text of
text_label and text rows, the prompt of prompt_completion and preference rows (the completion, chosen and rejected
answers are targets), and the user turns of a messages chat (assistant turns are targets).

An augmenter is `fn(texts: list[str]) -> list[str]`, one output per input, registered with `@augmenter("name")` in
a module that is imported before the stage runs: a package declares it as an entry point in the `ftflow.augmenters`
group, which ftflow loads when it first looks an augmenter up (AUGMENTERS, a registry of ftcore/plugins.py).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import pandas as pd

from ftcore.errors import DataError
from ftcore.plugins import Plugin, Registry
from ftcore.registry import MESSAGES_COLUMN

AUGMENTED_COLUMNS: dict[str, list[str]] = {
    "text_label": ["text"],
    "text": ["text"],
    "prompt_completion": ["prompt"],
    "preference": ["prompt"],
    "messages": [MESSAGES_COLUMN],
}
AUGMENTED_ROLES = {"user"}

Augmenter = Callable[[list[str]], list[str]]
WordEdit = Callable[[str, float, random.Random], str]

_SPACES = re.compile(r"(\s+)")
_WORD = re.compile(r"^(\W*)([A-Za-z][A-Za-z'-]*)(\W*)$")  # a word with the punctuation around it: "(great!"


@dataclass(frozen=True)
class RegisteredAugmenter(Plugin):
    fn: Augmenter | WordEdit
    # The built-in EDA edits change one text at a time, `fn(text, p, rng) -> text`, with the recipe's share of words
    # `p` and the stage's seeded random generator.
    word_edit: bool = False


# The EDA edits are below, in this module.
AUGMENTERS: Registry[RegisteredAugmenter] = Registry(
    "augmenter", RegisteredAugmenter, group="ftflow.augmenters", hint="add one with @augmenter, see docs/balancing.md")


def augmenter(name: str) -> Callable[[Augmenter], Augmenter]:
    """Register `fn(texts) -> texts` under `name`, used in a recipe as `balance.augment.operations: [name]`."""
    return AUGMENTERS.register(name)


def batch_edit(name: str, p: float, rng: random.Random) -> Augmenter:
    """The augmenter `name` as one call on a list of texts; a registered one is checked to return one string per
    text."""
    registered = AUGMENTERS.get(name)
    if registered.word_edit:
        edit = registered.fn
        return lambda texts: [edit(text, p, rng) for text in texts]
    fn = registered.fn

    def checked(texts: list[str]) -> list[str]:
        out = fn(texts)
        if len(out) != len(texts) or not all(isinstance(t, str) for t in out):
            raise DataError(f"augmenter {name!r} returned {len(out)} values for {len(texts)} texts; it must return "
                            "one string per text, in order")
        return out

    return checked


def edit_inputs(frame: pd.DataFrame, data_format: str, edit: Augmenter) -> pd.DataFrame:
    """`frame` with `edit` applied to its input texts, all of them in one call (a translation model batches)."""
    frame = frame.copy()
    for column in AUGMENTED_COLUMNS[data_format]:
        if column == MESSAGES_COLUMN:
            frame[column] = _edit_user_turns(frame[column].tolist(), edit)
        else:
            frame[column] = edit(frame[column].astype(str).tolist())
    return frame


def _edit_user_turns(cells: list[str], edit: Augmenter) -> list[str]:
    chats = [json.loads(cell) for cell in cells]
    turns = [m for chat in chats for m in chat if m["role"] in AUGMENTED_ROLES]
    for message, text in zip(turns, edit([m["content"] for m in turns]), strict=True):
        message["content"] = text
    return [json.dumps(chat, ensure_ascii=False) for chat in chats]


# ---------------------------------------------------------------------------------------------------------------
# EDA word edits. A text is split into words and the whitespace between them, so edits keep the spacing and line
# breaks; `p` is the share of words edited (at least one).


@AUGMENTERS.register("synonym_replacement", word_edit=True)
def synonym_replacement(text: str, p: float, rng: random.Random) -> str:
    """Replace words that have a synonym in the bundled list, keeping their capitalisation and punctuation."""
    parts = _SPACES.split(text)
    candidates = [i for i in range(0, len(parts), 2) if _synonyms_of(parts[i])]
    for i in rng.sample(candidates, min(len(candidates), _edits(parts, p))):
        lead, word, trail = _WORD.match(parts[i]).groups()
        synonym = rng.choice(_synonyms_of(parts[i]))
        parts[i] = lead + (synonym.capitalize() if word[0].isupper() else synonym) + trail
    return "".join(parts)


@AUGMENTERS.register("random_swap", word_edit=True)
def random_swap(text: str, p: float, rng: random.Random) -> str:
    """Swap two random words, once per edit."""
    parts = _SPACES.split(text)
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    if len(words) < 2:
        return text
    for _ in range(_edits(parts, p)):
        i, j = rng.sample(words, 2)
        parts[i], parts[j] = parts[j], parts[i]
    return "".join(parts)


@AUGMENTERS.register("random_deletion", word_edit=True)
def random_deletion(text: str, p: float, rng: random.Random) -> str:
    """Drop each word with probability p, keeping at least one."""
    parts = _SPACES.split(text)
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    if len(words) < 2:
        return text
    kept = [i for i in words if rng.random() >= p] or [rng.choice(words)]
    return "".join(parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in kept).rstrip()


def _edits(parts: list[str], p: float) -> int:
    return max(1, round(p * sum(1 for word in parts[::2] if word)))


def _synonyms_of(token: str) -> list[str]:
    match = _WORD.match(token)
    return _synonyms().get(match.group(2).lower(), []) if match else []


@lru_cache(maxsize=1)
def _synonyms() -> dict[str, list[str]]:
    """ftcore/data/resources/synonyms_en.tsv: `word<TAB>synonym,synonym,...`, lines starting with # are comments."""
    text = files("ftcore.data").joinpath("resources/synonyms_en.tsv").read_text(encoding="utf-8")
    pairs = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    return {word: synonyms.split(",") for word, synonyms in pairs}
