# Configs (recipe metric names, for GENERATION_METRICS): cer, wer, cer_normalized, wer_normalized.
"""Character and word error rates of text recognition: config `cer`, `wer`, `cer_normalized` or `wer_normalized`.
Lower is better. The rate is the Levenshtein distance (insertions, deletions, substitutions) from the prediction to
the reference over the reference's length, in characters (Unicode code points) or whitespace-separated words.

The per-example rows are (edit distance, reference length), so any subset of examples gets its corpus rate, summed
distances over summed lengths (the standard corpus CER/WER, which weighs a line by its length, not a mean of per-line
rates): what the bootstrap intervals resample. An empty reference adds no length and counts every predicted character
as an error: a set whose references are all empty scores 0 when nothing was predicted and inf otherwise.

The `_normalized` configs first apply `normalize_historical` to both texts (19th-century print); the others compare
the strings exactly as given."""

import re
import unicodedata
from collections.abc import Hashable, Sequence

import datasets  # noqa: F401  evaluate's loader reads the imports of a module; keep these two on separate lines
import evaluate  # noqa: F401

from ftcore.evaluation.example_metrics import ExampleMetric

_MAP = str.maketrans({"ſ": "s", "⸗": "-", "„": '"', "“": '"', "”": '"', "‟": '"', "»": '"', "«": '"',
                      "‚": "'", "‘": "'", "’": "'", "‛": "'", "›": "'", "‹": "'"})
_SUPERSCRIPT_E = re.compile("([aouAOU])\u0364")
_UMLAUT = {"a": "ä", "o": "ö", "u": "ü", "A": "Ä", "O": "Ö", "U": "Ü"}


def normalize_historical(text: str) -> str:
    """The text with the conventions of historical (Fraktur) print mapped to their modern equivalents, so that a
    transcription that modernises them, or one that keeps them, is not charged errors for it:

    ============================  ===========  ========================================================================
    in the text                   becomes      why
    ============================  ===========  ========================================================================
    compatibility characters      NFKC form    ligatures (ﬁ, ﬅ) and width or superscript variants are glyph choices
    ſ (long s)                    s            the form of s used inside words, not a different letter
    ⸗ (double oblique hyphen)     -            Fraktur's hyphen
    „ “ ” ‟ » «                   "            quotation marks differ by typeface and period, not by meaning
    ‚ ‘ ’ ‛ › ‹                   '            the same, single
    aͤ oͤ uͤ (vowel + U+0364)        ä ö ü        the small e written above a vowel is the older form of the umlaut
    runs of whitespace            one space    line breaks and spacing are layout; leading and trailing are dropped
    ============================  ===========  ========================================================================

    Case is kept: a letter recognised in the wrong case is an error. Other old spellings (ß, `seyn`, `Thür`) are words
    of the text and stay as they are."""
    text = unicodedata.normalize("NFKC", text).translate(_MAP)
    text = _SUPERSCRIPT_E.sub(lambda match: _UMLAUT[match[1]], text)
    return " ".join(text.split())


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance between two sequences (of characters or words), each edit costing 1.

    The DP runs in Hyyrö's bit-parallel form (Myers 1999, Hyyrö 2001): a Python int holds the differences between
    adjacent cells of a whole column, so each symbol of `b` costs a few integer operations instead of len(a) cells,
    which keeps page-length texts fast without a compiled dependency."""
    if len(a) < len(b):  # the loop runs over the shorter sequence
        a, b = b, a
    if not b:
        return len(a)
    match: dict[Hashable, int] = {}  # symbol -> bitmask of its positions in a
    for i, symbol in enumerate(a):
        match[symbol] = match.get(symbol, 0) | 1 << i
    mask, last = (1 << len(a)) - 1, 1 << (len(a) - 1)
    plus, minus, distance = mask, 0, len(a)  # vertical +1/-1 differences; the first column is 0, 1, ..., len(a)
    for symbol in b:
        eq = match.get(symbol, 0)
        xv = eq | minus
        xh = (((eq & plus) + plus) ^ plus) | eq
        h_plus = minus | ~(xh | plus)
        h_minus = plus & xh
        if h_plus & last:
            distance += 1
        elif h_minus & last:
            distance -= 1
        h_plus = h_plus << 1 | 1  # the first row is 0, 1, 2, ...: each step along it adds 1
        h_minus <<= 1
        plus = (h_minus | ~(xv | h_plus)) & mask
        minus = h_plus & xv
    return distance


class ErrorRates(ExampleMetric):
    """Corpus character or word error rate of the predictions against the references."""

    def statistics(self, predictions, references):
        normalize = normalize_historical if self.config_name.endswith("_normalized") else str
        split = list if self.config_name.startswith("cer") else str.split
        rows = []
        for prediction, reference in zip(predictions, references, strict=True):
            reference_units = split(normalize(reference))
            rows.append((edit_distance(split(normalize(prediction)), reference_units), len(reference_units)))
        return rows

    def aggregate(self, rows):
        if not len(rows):
            return float("nan")
        distance, length = rows.sum(axis=0)
        if not length:
            return 0.0 if not distance else float("inf")
        return float(distance / length)
