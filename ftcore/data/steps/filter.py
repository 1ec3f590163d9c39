"""Built-in steps that quarantine rows by what their text is: filter_language (offline language identification with
lingua) and filter_toxicity (a pluggable scorer from ftcore.safety.toxicity)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from pydantic import AliasChoices, Field, field_validator, model_validator

from ftcore.registry import Batch, StepParams, StepResult, cleaning_step
from ftcore.safety.toxicity import MODEL_SCORERS, TOXICITY_SCORERS, score_texts

# --- filter_language ----------------------------------------------------------------------------------------------

# The detector only chooses among these (plus the kept languages): fewer candidates is faster, smaller in memory
# and more accurate on short text than all 75 languages lingua knows.
DEFAULT_CANDIDATES = ("en", "de", "fr", "es", "it", "pt", "nl")


def _iso_codes(codes: list[str]) -> list[str]:
    from lingua import IsoCode639_1

    normalized = [c.strip().lower() for c in codes]
    unknown = []
    for code in normalized:
        try:
            IsoCode639_1.from_str(code)
        except ValueError:
            unknown.append(code)
    if unknown:
        raise ValueError(f"not ISO 639-1 language codes that lingua knows: {unknown}")
    return list(dict.fromkeys(normalized))


class FilterLanguageParams(StepParams):
    keep: list[str] = Field(default_factory=lambda: ["en"], min_length=1,
                            validation_alias=AliasChoices("keep", "languages"),
                            description="ISO 639-1 codes of the languages to keep (also accepted as `languages`)")
    candidates: list[str] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES),
                                  description="the other languages the detector may answer")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0,
                                  description="quarantine only when another language is at least this likely")
    min_chars: int = Field(20, ge=0, description="shorter texts are kept unjudged")
    max_chars: int = Field(500, ge=1, description="only the first max_chars characters are read (speed)")
    columns: list[str] | None = Field(None, description="default: all text columns, joined")

    @field_validator("keep", "candidates")
    @classmethod
    def _known_codes(cls, codes: list[str]) -> list[str]:
        return _iso_codes(codes)

    @model_validator(mode="after")
    def _two_languages(self) -> FilterLanguageParams:
        if len(set(self.keep) | set(self.candidates)) < 2:
            raise ValueError("the detector needs at least two languages to choose from: add `candidates`")
        return self


@functools.cache
def language_detector(codes: tuple[str, ...]):
    """One lingua detector per set of languages, kept for the process: its models load on first use."""
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_iso_codes_639_1(*(IsoCode639_1.from_str(c) for c in codes)).build()


def detect_languages(texts: list[str], codes: tuple[str, ...]) -> list[tuple[str | None, float]]:
    """(ISO 639-1 code, confidence) of each text's most likely language; (None, 0.0) when lingua finds none."""
    results = language_detector(codes).compute_language_confidence_values_in_parallel(texts)
    return [(values[0].language.iso_code_639_1.name.lower(), values[0].value) if values and values[0].value > 0
            else (None, 0.0) for values in results]


def joined_text(batch: Batch, columns: list[str] | None) -> pd.Series:
    cols = columns or batch.text_columns
    texts = batch.text(cols[0])
    for col in cols[1:]:
        texts = texts + "\n" + batch.text(col)
    return texts


@cleaning_step("filter_language", params=FilterLanguageParams)
def filter_language(batch: Batch, p: FilterLanguageParams) -> StepResult:
    """Quarantine rows whose text is in another language than `keep` (offline detection with lingua).

    The text is the `columns` (default: all text columns) joined; texts with fewer than `min_chars` non-blank
    characters are kept unjudged, since no detector is reliable on a word or two. A row is quarantined only when
    its most likely language is not kept and has at least `min_confidence`; when the detector is less sure, the row
    is kept.
    """
    texts = joined_text(batch, p.columns).str.strip()
    judged = texts.str.len() >= p.min_chars
    codes = tuple(sorted(set(p.keep) | set(p.candidates)))
    # Only the start of a long text is read: a paragraph decides the language as well as a whole document does.
    detected = detect_languages(texts[judged].str.slice(0, p.max_chars).tolist(), codes)
    reasons = pd.Series("", index=batch.frame.index)
    expected = " or ".join(p.keep)
    judged_reasons = [f"language {code} ({conf:.2f}), expected {expected}"
                      if code is not None and code not in p.keep and conf >= p.min_confidence else ""
                      for code, conf in detected]
    reasons[judged] = judged_reasons
    return StepResult.split(batch.frame, reasons.eq(""), reasons)


# --- filter_toxicity ----------------------------------------------------------------------------------------------


class FilterToxicityParams(StepParams):
    scorer: str = Field("lexicon", description="a registered toxicity scorer: lexicon, classifier, or your own")
    threshold: float = Field(0.5, ge=0.0, description="quarantine when score >= threshold (above 1: never)")
    columns: list[str] | None = Field(None, description="default: all text columns, each scored on its own")
    model_path: str | None = Field(None, description="classifier, guard: a local Hugging Face model "
                                                                  "folder")
    toxic_label: str | int | None = Field(None, description="classifier: the label (name or index) meaning toxic")
    batch_size: int = Field(32, ge=1, description="classifier, guard: texts per forward pass")

    @field_validator("scorer")
    @classmethod
    def _registered(cls, name: str) -> str:
        TOXICITY_SCORERS.get(name)  # UnknownPlugin, a ValueError, lists the registered scorers
        return name

    @model_validator(mode="after")
    def _classifier_needs_a_model(self) -> FilterToxicityParams:
        if self.scorer in MODEL_SCORERS and not self.model_path:
            raise ValueError(f"scorer {self.scorer!r} needs model_path (a local Hugging Face model folder)")
        return self


@cleaning_step("filter_toxicity", params=FilterToxicityParams)
def filter_toxicity(batch: Batch, p: FilterToxicityParams) -> StepResult:
    """Quarantine rows whose text a toxicity scorer (lexicon, classifier, or a registered one) scores >= threshold."""
    columns = p.columns or batch.text_columns
    texts = {col: batch.text(col).tolist() for col in columns}
    n = len(batch.frame)
    # One scorer call for all columns, so a classifier fills its batches across columns.
    flat = [t for col in columns for t in texts[col]]
    scores = np.asarray(score_texts(p.scorer, flat, model_path=p.model_path, toxic_label=p.toxic_label,
                                    batch_size=p.batch_size) if flat else [], dtype=float).reshape(len(columns), n)
    worst_col = scores.argmax(axis=0) if n else np.zeros(0, dtype=int)
    worst = scores.max(axis=0) if n else np.zeros(0)
    toxic = worst >= p.threshold
    explain = TOXICITY_SCORERS.get(p.scorer).explain
    reasons = pd.Series("", index=batch.frame.index)
    for row in np.flatnonzero(toxic):
        col = columns[worst_col[row]]
        why = explain(texts[col][row]) if explain else ""
        source = f"{p.scorer}: {why}" if why else p.scorer
        reasons.iloc[row] = f"toxicity {worst[row]:.2f} >= {p.threshold:g} in {col} ({source})"
    return StepResult.split(batch.frame, pd.Series(~toxic, index=batch.frame.index), reasons)
