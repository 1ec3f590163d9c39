"""Built-in steps that repair, filter and redact text: fix_unicode, strip_markup, normalize_whitespace, drop_empty,
filter_length, redact_pii."""

from __future__ import annotations

import html
import re
from functools import partial
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from ftcore.registry import Batch, StepParams, StepResult, cleaning_step

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


@cleaning_step("normalize_whitespace")
def normalize_whitespace(batch: Batch, _: StepParams) -> StepResult:
    """Collapse runs of whitespace to one space and strip both ends."""
    return StepResult.keep_all(batch.map_text(lambda s: _SPACE.sub(" ", s).strip()))


@cleaning_step("strip_markup")
def strip_markup(batch: Batch, _: StepParams) -> StepResult:
    """Remove HTML/XML tags and unescape entities (&amp; -> &)."""
    return StepResult.keep_all(batch.map_text(lambda s: _SPACE.sub(" ", html.unescape(_TAG.sub(" ", s))).strip()))


class DropEmptyParams(StepParams):
    min_chars: int = 1


@cleaning_step("drop_empty", params=DropEmptyParams)
def drop_empty(batch: Batch, p: DropEmptyParams) -> StepResult:
    """Quarantine rows where any text column has fewer than `min_chars` non-space characters."""
    lengths = pd.DataFrame({c: batch.text(c).str.strip().str.len() for c in batch.text_columns})
    too_short = lengths.lt(p.min_chars)
    reason = too_short.apply(
        lambda row: "empty " + ", ".join(c for c in batch.text_columns if row[c]), axis=1
    ) if len(lengths) else pd.Series(dtype=str)
    return StepResult.split(batch.frame, ~too_short.any(axis=1), reason)


class FixUnicodeParams(StepParams):
    normalization: Literal["NFC", "NFKC", "none"] = "NFC"


@cleaning_step("fix_unicode", params=FixUnicodeParams)
def fix_unicode(batch: Batch, p: FixUnicodeParams) -> StepResult:
    """Repair mojibake and broken escapes with ftfy (â€™ -> ’), then apply Unicode normalisation."""
    import ftfy

    normalization = None if p.normalization == "none" else p.normalization
    return StepResult.keep_all(batch.map_text(lambda s: ftfy.fix_text(s, normalization=normalization)))


class FilterLengthParams(StepParams):
    columns: list[str] | None = Field(None, description="columns to check; default: all text columns")
    min_chars: int = Field(0, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0, description="whitespace-separated tokens")
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> FilterLengthParams:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError("max_chars must be at least min_chars")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be at least min_tokens")
        return self


@cleaning_step("filter_length", params=FilterLengthParams)
def filter_length(batch: Batch, p: FilterLengthParams) -> StepResult:
    """Quarantine rows whose text is shorter or longer than the limits, in characters and in tokens."""
    reasons = pd.Series("", index=batch.frame.index)
    for col in p.columns or batch.text_columns:
        text = batch.text(col)
        measures = {"chars": text.str.len(), "tokens": text.str.split().str.len()}
        for unit, (low, high) in {"chars": (p.min_chars, p.max_chars), "tokens": (p.min_tokens, p.max_tokens)}.items():
            n = measures[unit]
            too_short = (n < low) & (reasons == "")
            reasons[too_short] = n[too_short].map(lambda v, c=col, u=unit, lo=low: f"{c} has {v} {u} < min {lo}")
            if high is not None:
                too_long = (n > high) & (reasons == "")
                reasons[too_long] = n[too_long].map(lambda v, c=col, u=unit, hi=high: f"{c} has {v} {u} > max {hi}")
    return StepResult.split(batch.frame, reasons == "", reasons)


PII_KINDS = ("email", "url", "card", "id", "phone")
_PII_PATTERNS = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    "url": re.compile(r"\b(?:https?://|www\.)[^\s<>\"()]+", re.IGNORECASE),
    # Contiguous 13-19 digits, or the printed card groupings 4-4-4-(1-7) and 4-6-5. Separators stay inside one
    # number, so a ZIP code next to a phone number is never read as one long number.
    "card": re.compile(r"(?<![\d-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})(?![\d-])"),
    "id": re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"),  # SSN-shaped national ids
    "phone": re.compile(
        r"(?<![\w+-])(?:"
        r"(?:\+?1[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # North American: (301) 402-7364
        r"|\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"                       # international: +44 20 7946 0958
        r"|0\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}"                             # national trunk prefix: 020 7946 0958
        r")(?![\w-])"
    ),
}


def _luhn_valid(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def _card_or_id(match: re.Match, kinds: tuple[str, ...]) -> str:
    # 13-19 digits: a card when the Luhn check passes, otherwise an account or id number.
    if _luhn_valid(match.group()):
        return "<CARD>"
    return "<ID>" if "id" in kinds else match.group()


def _phone(match: re.Match, kinds: tuple[str, ...]) -> str:
    # At least 9 digits, so years, doses and short counts are left alone.
    return "<PHONE>" if sum(c.isdigit() for c in match.group()) >= 9 else match.group()


_REPLACERS = {
    "email": lambda m, kinds: "<EMAIL>",
    "url": lambda m, kinds: "<URL>",
    "card": _card_or_id,
    "id": lambda m, kinds: "<ID>",
    "phone": _phone,
}


def redact_text(text: str, kinds: tuple[str, ...] = PII_KINDS) -> str:
    """Replace personal data with typed placeholders such as <EMAIL>. Long digit runs are <CARD> when they pass the
    Luhn check and <ID> otherwise; phone numbers need at least 9 digits."""
    for kind in PII_KINDS:  # fixed order: cards before phones, so a card number is never read as a phone
        if kind in kinds:
            text = _PII_PATTERNS[kind].sub(partial(_REPLACERS[kind], kinds=kinds), text)
    return text


class RedactPiiParams(StepParams):
    kinds: list[Literal["email", "url", "card", "id", "phone"]] = Field(default_factory=lambda: list(PII_KINDS))


@cleaning_step("redact_pii", params=RedactPiiParams)
def redact_pii(batch: Batch, p: RedactPiiParams) -> StepResult:
    """Replace emails, URLs, card numbers, SSN-like ids and phone numbers with <EMAIL>, <URL>, <CARD>, <ID>, <PHONE>."""
    kinds = tuple(p.kinds)
    return StepResult.keep_all(batch.map_text(lambda s: redact_text(s, kinds)))
