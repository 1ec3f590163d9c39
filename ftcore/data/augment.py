"""Augmentation of the train split for low-resource data: EDA-style word edits (synonym replacement, random swap,
random deletion; Wei & Zou 2019) and augmenters registered by data engineers (back-translation, paraphrasing).

Only a row's input is edited, never what the model is trained to produce (AUGMENTED_COLUMNS): the text of
text_label and text rows, the prompt of prompt_completion and preference rows (the completion, chosen and rejected
answers are targets), and the user turns of a messages chat (assistant turns are targets).

An augmenter is `fn(texts: list[str]) -> list[str]`, one output per input, registered with `@augmenter("name")` in
a module that is imported before the stage runs: a package declares it as an entry point in the `ftflow.augmenters`
group, which ftflow loads when it first looks an augmenter up.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import entry_points
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ftcore.errors import DataError
from ftcore.registry import MESSAGES_COLUMN

if TYPE_CHECKING:
    from ftcore.config import AugmentConfig

ENTRY_POINT_GROUP = "ftflow.augmenters"
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

_AUGMENTERS: dict[str, Augmenter] = {}
_discovered = False
_SPACES = re.compile(r"(\s+)")
_WORD = re.compile(r"^(\W*)([A-Za-z][A-Za-z'-]*)(\W*)$")  # a word with the punctuation around it: "(great!"


def augmenter(name: str) -> Callable[[Augmenter], Augmenter]:
    """Register `fn(texts) -> texts` under `name`, used in a recipe as `balance.augment.operations: [name]`."""

    def register(fn: Augmenter) -> Augmenter:
        if name in EDA_OPERATIONS:
            raise ValueError(f"augmenter {name!r} is built in; register yours under another name")
        _AUGMENTERS[name] = fn
        return fn

    return register


def available_operations() -> list[str]:
    """The built-in EDA operations and every registered augmenter (entry points loaded once)."""
    global _discovered
    if not _discovered:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _discovered = True
    return sorted([*EDA_OPERATIONS, *_AUGMENTERS])


def check_operations(names: list[str]) -> None:
    """ValueError naming the first unknown operation and listing the known ones."""
    known = available_operations()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown augmenter {name!r}; registered: {', '.join(known)} (add one with "
                             f"@augmenter({name!r}), see docs/balancing.md)")


def augmenter_modules(names: list[str]) -> list[str]:
    """The modules of the registered (not built-in) augmenters among `names`: their source belongs in the stage's
    cache key, as data engineers' cleaning steps do."""
    available_operations()
    return sorted({_AUGMENTERS[name].__module__ for name in names if name in _AUGMENTERS})


def augment_rows(frame: pd.DataFrame, cfg: AugmentConfig, data_format: str, seed: int,
                 labels: pd.Series | None = None) -> pd.DataFrame:
    """The rows of `frame` (augmented=False), then their variants (augmented=True, augmented_from = the position
    of the row the variant was made from). `labels`, aligned with `frame`, are needed for only_minority."""
    try:
        check_operations(cfg.operations)
    except ValueError as e:  # registered when the recipe loaded, but not in this process
        raise DataError(f"balance.augment.operations: {e}") from None
    sources = (_minority_sources(labels, cfg.copies, seed) if cfg.only_minority
               else np.tile(np.arange(len(frame)), cfg.copies))
    variants = frame.iloc[sources].reset_index(drop=True)
    rng = random.Random(seed)
    for name in cfg.operations:
        variants = _edit_inputs(variants, data_format, _batch_edit(name, cfg.p, rng))
    originals = frame.reset_index(drop=True).assign(
        augmented=False, augmented_from=pd.array([pd.NA] * len(frame), dtype="Int64"))
    return pd.concat([originals, variants.assign(augmented=True, augmented_from=pd.array(sources, dtype="Int64"))],
                     ignore_index=True)


def _minority_sources(labels: pd.Series | None, copies: int, seed: int) -> np.ndarray:
    """Row positions to vary: for each class smaller than the largest, its rows in a seeded order, cycled until the
    class reaches the largest one's size or every row has `copies` variants."""
    if labels is None:
        raise ValueError("only_minority needs the labels")
    values = labels.to_numpy()
    largest = labels.value_counts().max()
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in sorted(set(values), key=str):
        rows = np.flatnonzero(values == cls)
        chosen.append(np.resize(rng.permutation(rows), min(copies * len(rows), largest - len(rows))))
    return np.concatenate(chosen).astype(int)


def _batch_edit(name: str, p: float, rng: random.Random) -> Augmenter:
    if name in EDA_OPERATIONS:
        edit = EDA_OPERATIONS[name]
        return lambda texts: [edit(text, p, rng) for text in texts]
    fn = _AUGMENTERS[name]

    def checked(texts: list[str]) -> list[str]:
        out = fn(texts)
        if len(out) != len(texts) or not all(isinstance(t, str) for t in out):
            raise DataError(f"augmenter {name!r} returned {len(out)} values for {len(texts)} texts; it must return "
                            "one string per text, in order")
        return out

    return checked


def _edit_inputs(frame: pd.DataFrame, data_format: str, edit: Augmenter) -> pd.DataFrame:
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


def synonym_replacement(text: str, p: float, rng: random.Random) -> str:
    """Replace words that have a synonym in the bundled list, keeping their capitalisation and punctuation."""
    parts = _SPACES.split(text)
    candidates = [i for i in range(0, len(parts), 2) if _synonyms_of(parts[i])]
    for i in rng.sample(candidates, min(len(candidates), _edits(parts, p))):
        lead, word, trail = _WORD.match(parts[i]).groups()
        synonym = rng.choice(_synonyms_of(parts[i]))
        parts[i] = lead + (synonym.capitalize() if word[0].isupper() else synonym) + trail
    return "".join(parts)


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


def random_deletion(text: str, p: float, rng: random.Random) -> str:
    """Drop each word with probability p, keeping at least one."""
    parts = _SPACES.split(text)
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    if len(words) < 2:
        return text
    kept = [i for i in words if rng.random() >= p] or [rng.choice(words)]
    return "".join(parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in kept).rstrip()


EDA_OPERATIONS: dict[str, WordEdit] = {
    "synonym_replacement": synonym_replacement,
    "random_swap": random_swap,
    "random_deletion": random_deletion,
}


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
