"""Built-in steps that work on spaCy tokens: expand_abbreviations, remove_stopwords.

Both use `spacy.blank("en")` (a tokenizer and rule-based components only, so nothing is downloaded), built once
per process, and read texts in batches with `nlp.pipe`. Matching on tokens rather than substrings is the point:
"MI" is a token in "He had an MI." but not in "MIT" or "SMILE".
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Literal

import pandas as pd
import yaml
from pydantic import Field, field_validator, model_validator

from ftcore.regex_trie import trie_pattern
from ftcore.registry import MESSAGES_COLUMN, Batch, StepParams, StepResult, cleaning_step

ABBREVIATIONS_DIR = ("resources", "abbreviations")  # under the ftcore.data package


@functools.cache
def blank_english():
    """A tokenizer-only English pipeline (stop words and lexical attributes included)."""
    import spacy  # late: importing spaCy costs about a second, and most runs use no spaCy step

    return spacy.blank("en")


@functools.cache
def sentencizer():
    """spaCy's rule-based sentence splitter as a standalone component: a step runs it only on the docs that need
    sentence boundaries (those with a match), which is most of the saving on long texts."""
    from spacy.pipeline import Sentencizer

    return Sentencizer()


def rewrite_columns(batch: Batch, columns: list[str] | None, fn: Callable[[list[str]], list[str]]) -> pd.DataFrame:
    """A copy of the frame with `fn` applied to all text values of each column at once (one call per column, so
    `fn` can batch them through `nlp.pipe`); in a `messages` column, to every message's content. Non-string
    values (missing text) are left as they are."""
    frame = batch.frame.copy()
    for column in columns or batch.text_columns:
        values = frame[column].tolist()
        if column == MESSAGES_COLUMN:
            conversations = [json.loads(cell) for cell in values]
            contents = iter(fn([m["content"] for conv in conversations for m in conv]))
            frame[column] = [json.dumps([{**m, "content": next(contents)} for m in conv], ensure_ascii=False)
                             for conv in conversations]
        else:
            positions = [i for i, v in enumerate(values) if isinstance(v, str)]
            for i, text in zip(positions, fn([values[i] for i in positions]), strict=True):
                values[i] = text
            frame[column] = values
    return frame


# --- expand_abbreviations -----------------------------------------------------------------------------------------


def shipped_dictionaries() -> list[str]:
    folder = files("ftcore.data").joinpath(*ABBREVIATIONS_DIR)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def load_dictionary(name: str) -> dict[str, str]:
    """The shipped abbreviation dictionary `name` (ftcore/data/resources/abbreviations/<name>.yaml)."""
    path = files("ftcore.data").joinpath(*ABBREVIATIONS_DIR, f"{name}.yaml")
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    bad = [k for k, v in entries.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:  # YAML reads an unquoted NO or 1 as a boolean or a number
        raise ValueError(f"abbreviation dictionary {name!r}: keys and expansions must be strings: {bad}")
    return entries


class ExpandAbbreviationsParams(StepParams):
    dictionary: str | None = Field("clinical", description="a shipped dictionary; null: only `extra`")
    extra: dict[str, str | None] = Field(
        default_factory=dict, description="{ABBR: expansion} added to or overriding the dictionary; null removes")
    case_sensitive: bool = True
    style: Literal["replace", "append"] = Field("replace", description="append: 'myocardial infarction (MI)'")
    plurals: bool = Field(False, description="also expand 'MIs' with a naively pluralised expansion")
    capitalize: bool = Field(True, description="capitalise an expansion that starts a sentence")
    columns: list[str] | None = Field(None, description="default: all text columns")
    batch_size: int = Field(256, ge=1, description="texts per nlp.pipe batch")

    @field_validator("dictionary")
    @classmethod
    def _shipped(cls, name: str | None) -> str | None:
        if name is not None and name not in shipped_dictionaries():
            raise ValueError(f"no abbreviation dictionary {name!r}; shipped: {', '.join(shipped_dictionaries())}")
        return name

    @model_validator(mode="after")
    def _not_empty(self) -> ExpandAbbreviationsParams:
        if not abbreviation_table(self.dictionary, tuple(sorted(self.extra.items()))):
            raise ValueError("no abbreviations to expand: name a dictionary or give `extra`")
        return self


@functools.cache
def abbreviation_table(dictionary: str | None, extra: tuple[tuple[str, str | None], ...]) -> dict[str, str]:
    table = dict(load_dictionary(dictionary)) if dictionary else {}
    for abbreviation, expansion in extra:
        if expansion is None:
            table.pop(abbreviation, None)
        else:
            table[abbreviation] = expansion
    return table


_PLURAL = "\x1fs"  # suffix of a matcher label that marks the plural form of an abbreviation


def pluralize(expansion: str) -> str:
    """Naive English plural of the expansion's last word (infarction -> infarctions, artery -> arteries)."""
    if re.search(r"(?:s|x|z|ch|sh)$", expansion):
        return expansion + "es"
    if re.search(r"[^aeiou]y$", expansion):
        return expansion[:-1] + "ies"
    return expansion + "s"


@dataclass(frozen=True)
class Expander:
    """A PhraseMatcher over one abbreviation table, and a cheap regex that finds the texts worth tokenising."""

    table: dict[str, str]
    matcher: object  # spacy.matcher.PhraseMatcher
    prefilter: re.Pattern
    case_sensitive: bool

    def may_match(self, text: str) -> bool:
        # Lowercasing the text is cheaper than a re.IGNORECASE search, and checking "no letter before" on the few
        # hits is cheaper than a lookbehind the regex engine would try at every position.
        text = text if self.case_sensitive else text.lower()
        return any(m.start() == 0 or not text[m.start() - 1].isalpha() for m in self.prefilter.finditer(text))


@functools.lru_cache(maxsize=16)
def build_expander(dictionary: str | None, extra: tuple[tuple[str, str | None], ...], case_sensitive: bool,
                   plurals: bool) -> Expander:
    """Built once per distinct settings: the matcher compiles every abbreviation into token patterns."""
    from spacy.matcher import PhraseMatcher

    nlp = blank_english()  # the docs are made by this pipeline too: the matcher and the docs share its vocab
    table = abbreviation_table(dictionary, extra)
    matcher = PhraseMatcher(nlp.vocab, attr="ORTH" if case_sensitive else "LOWER")
    spellings = set()
    for abbreviation in table:
        # Tokenised like the text is, so "s/p" (three tokens) and "b.i.d." (two) match as they appear.
        patterns = {abbreviation: nlp.make_doc(abbreviation)}
        if plurals and abbreviation[-1:].isalnum():
            patterns[abbreviation + _PLURAL] = nlp.make_doc(abbreviation + "s")
        for label, pattern in patterns.items():
            matcher.add(label, [pattern])
            spellings.add(" ".join(token.text if case_sensitive else token.lower_ for token in pattern))
    # Every expansion is one of these spellings, not inside a longer word (see _inside_a_word), and the matcher
    # allows one space between tokens ("s / p"): a text without any is not tokenised at all.
    words = trie_pattern(spellings, gap=r"\s?")
    prefilter = re.compile(rf"(?:{words})(?![^\W\d_])")
    return Expander(table=table, matcher=matcher, prefilter=prefilter, case_sensitive=case_sensitive)


def _inside_a_word(text: str, span) -> bool:
    """A letter right before or after the match: spaCy splits a few words ("can't" -> "ca" "n't", "gonna" ->
    "gon" "na"), and an abbreviation "ca" or "na" must not be expanded inside them."""
    return (span.start_char > 0 and text[span.start_char - 1].isalpha()) or (
        span.end_char < len(text) and text[span.end_char].isalpha())


_WORD = re.compile(r"[^\W_]+")


def _spells(words: list[str], abbreviation: str, expansion: str, at_end: bool) -> bool:
    """Whether the last (`at_end`) or first of `words` are the expansion, or words whose initials spell the
    abbreviation: "End stage renal disease" explains ESRD and "computerized tomography" explains CT as well as the
    dictionary's own wording does."""
    wanted = [w.lower() for w in _WORD.findall(expansion)]
    letters = [c.lower() for c in abbreviation if c.isalpha()]

    def take(k: int) -> list[str]:
        return words[len(words) - k :] if at_end else words[:k]

    return take(len(wanted)) == wanted or (len(letters) > 1 and [w[0] for w in take(len(letters))] == letters)


def _already_explained(text: str, span, expansion: str) -> bool:
    """'myocardial infarction (MI)' and 'MI (myocardial infarction)' already say it: expanding would repeat it."""
    window = 4 * len(expansion) + 20  # enough characters to hold the expansion however it is spelled
    before, after = text[max(0, span.start_char - window) : span.start_char].rstrip(), text[span.end_char :][:window]
    if before.endswith("(") and after.lstrip().startswith(")"):
        return _spells([w.lower() for w in _WORD.findall(before[:-1])], span.text, expansion, at_end=True)
    if after.lstrip().startswith("("):
        inside = after.lstrip()[1:].split(")", 1)[0]
        return _spells([w.lower() for w in _WORD.findall(inside)], span.text, expansion, at_end=False)
    return False


# Roman numerals as they appear in medical text (stages, types, cranial nerves); rarer ones such as "MI" and "DM" are
# far more often abbreviations.
_NUMERALS = frozenset({"I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"})
# Words a Roman numeral follows: "stage IV" is a cancer stage, not "stage intravenous".
_NUMBERED = frozenset({"stage", "stages", "type", "types", "grade", "grades", "class", "classes", "phase", "phases",
                       "level", "levels", "part", "parts", "category", "factor", "section", "chapter", "tier",
                       "volume", "nerve", "nerves", "trisomy", "collagen", "lesion", "lesions"})
_LIST_WORDS = frozenset({",", "and", "or", "to", "-", "–", "through", "/"})


def _is_numeral(doc, span) -> bool:
    """Whether an abbreviation spelled like a Roman numeral (IV, MI, DM) is used as one here: after a word that takes
    a number ("stage IV", "type II"), or in a run of numerals ("stages III and IV", "IV or V")."""
    if span.text not in _NUMERALS:
        return False
    i = span.start - 1
    while i >= 0 and (doc[i].text in _LIST_WORDS or doc[i].is_space):
        i -= 1
    if i >= 0 and (doc[i].lower_ in _NUMBERED or doc[i].text in _NUMERALS):
        return True
    j = span.end
    while j < len(doc) and (doc[j].text in _LIST_WORDS or doc[j].is_space):
        j += 1
    return span.end < j < len(doc) and doc[j].text in _NUMERALS


def _starts_sentence(doc, i: int) -> bool:
    """Whether token `i` is the first word of a sentence (the sentencizer starts one at the whitespace after a full
    stop when there are several spaces)."""
    while not doc[i].is_sent_start and i > 0 and doc[i - 1].is_space:
        i -= 1
    return bool(doc[i].is_sent_start)


def _ends_sentence(doc, end: int) -> bool:
    """Whether the text after token `end` starts a new sentence (or nothing but whitespace follows)."""
    starts = False
    for token in doc[end:]:
        if token.is_space:
            if "\n" in token.text:
                return True
            starts = starts or token.is_sent_start  # with several spaces the sentence starts at the whitespace
            continue
        return (starts or token.is_sent_start) and token.text[:1].isupper()
    return True


def _expand_doc(doc, text: str, expander: Expander, style: str, capitalize: bool) -> str:
    """`text` is `doc.text`, passed in because spaCy rebuilds `doc.text` from every token on each access."""
    from spacy.util import filter_spans

    # Overlapping matches ("b.i.d" inside "b.i.d."): the longest wins.
    spans = filter_spans(expander.matcher(doc, as_spans=True))
    if not spans:
        return text
    sentencizer()(doc)  # sentence starts and ends, for capitals and full stops
    pieces, last = [], 0
    for span in spans:
        if any(token.is_sent_start for token in span[1:]):
            continue  # a multi-token abbreviation never spans two sentences
        abbreviation, plural = span.label_.removesuffix(_PLURAL), span.label_.endswith(_PLURAL)
        expansion = expander.table[abbreviation]
        expansion = pluralize(expansion) if plural else expansion
        if _inside_a_word(text, span) or _already_explained(text, span, expansion) or _is_numeral(doc, span):
            continue
        if capitalize and expansion[:1].islower() and _starts_sentence(doc, span.start):
            expansion = expansion[0].upper() + expansion[1:]
        if style == "append":
            expansion = f"{expansion} ({span.text})"
        # An abbreviation written with a final period ("b.i.d.") that ends a sentence also carries the sentence's
        # full stop: put it back after the expansion.
        if len(span) > 1 and span[-1].text == "." and _ends_sentence(doc, span.end):
            expansion += "."
        pieces += [text[last : span.start_char], expansion]
        last = span.end_char
    pieces.append(text[last:])
    return "".join(pieces)


def expand_texts(texts: list[str], p: ExpandAbbreviationsParams) -> list[str]:
    """Expand the abbreviations of `p` in every text; untouched texts come back as they were."""
    expander = build_expander(p.dictionary, tuple(sorted(p.extra.items())), p.case_sensitive, p.plurals)
    candidates = [i for i, text in enumerate(texts) if expander.may_match(text)]
    out = list(texts)
    docs = blank_english().pipe((texts[i] for i in candidates), batch_size=p.batch_size)
    for i, doc in zip(candidates, docs, strict=True):
        out[i] = _expand_doc(doc, texts[i], expander, p.style, p.capitalize)
    return out


@cleaning_step("expand_abbreviations", params=ExpandAbbreviationsParams)
def expand_abbreviations(batch: Batch, p: ExpandAbbreviationsParams) -> StepResult:
    """Expand abbreviations (MI -> myocardial infarction) from a shipped dictionary plus `extra`, whole tokens only."""
    return StepResult.keep_all(rewrite_columns(batch, p.columns, lambda texts: expand_texts(texts, p)))


# --- remove_stopwords ---------------------------------------------------------------------------------------------


class RemoveStopwordsParams(StepParams):
    columns: list[str] | None = Field(None, description="default: all text columns")
    extra_stopwords: list[str] = Field(default_factory=list, description="removed too (case-insensitive)")
    keep: list[str] = Field(default_factory=list, description="stop words to keep, e.g. 'not' for sentiment")
    lowercase: bool = False
    punctuation: Literal["keep", "drop"] = "keep"
    output: Literal["text", "tokens"] = Field("text", description="tokens: the tokens joined by single spaces")
    batch_size: int = Field(512, ge=1, description="texts per nlp.pipe batch")


@functools.lru_cache(maxsize=16)
def stopword_set(extra: tuple[str, ...], keep: tuple[str, ...]) -> frozenset[str]:
    """spaCy's English stop words plus `extra` minus `keep`, lowercase (tokens are compared by their lowercase)."""
    words = {w.lower() for w in blank_english().Defaults.stop_words} | {w.lower() for w in extra}
    return frozenset(words - {w.lower() for w in keep})


def _strip_doc(doc, stop: frozenset[str], p: RemoveStopwordsParams) -> str:
    drop_punct = p.punctuation == "drop"
    parts: list[str] = []
    gap = ""  # what separates the next kept token from the previous one in `text` output
    for token in doc:
        if token.is_space or token.lower_ in stop or (drop_punct and token.is_punct):
            # A removed token leaves a space behind if it had any, so "cat, the dog" becomes "cat dog", not "catdog".
            if token.whitespace_ or token.is_space:
                gap = " "
            continue
        if parts and p.output == "text":
            parts.append(gap)
        parts.append(token.lower_ if p.lowercase else token.text)
        gap = token.whitespace_
    return " ".join(parts) if p.output == "tokens" else "".join(parts)


def remove_stopwords_from(texts: list[str], p: RemoveStopwordsParams) -> list[str]:
    stop = stopword_set(tuple(sorted(p.extra_stopwords)), tuple(sorted(p.keep)))
    return [_strip_doc(doc, stop, p) for doc in blank_english().pipe(texts, batch_size=p.batch_size)]


@cleaning_step("remove_stopwords", params=RemoveStopwordsParams)
def remove_stopwords(batch: Batch, p: RemoveStopwordsParams) -> StepResult:
    """Remove English stop words (spaCy's list + `extra_stopwords` - `keep`): text features for classification.

    `output: tokens` writes the tokens joined by single spaces (a tokenised feature); `output: text` keeps the
    text's own spacing, with one space where removed words were. Rows left with no words are quarantined.
    """
    columns = p.columns or batch.text_columns
    frame = rewrite_columns(batch, columns, lambda texts: remove_stopwords_from(texts, p))
    rewritten = Batch(frame, batch.text_columns)
    reasons = pd.Series("", index=frame.index)
    what = "stopwords" if p.punctuation == "keep" else "stopwords and punctuation"
    for column in columns:
        was_empty = batch.text(column).str.strip().eq("")
        now_empty = rewritten.text(column).str.strip().eq("") & reasons.eq("")
        reasons[now_empty & was_empty] = f"{column} is empty"
        reasons[now_empty & ~was_empty] = f"{column} is only {what}"
    return StepResult.split(frame, reasons.eq(""), reasons)
