"""clinical_terms: are the clinical terms an answer should contain present, and no wrong ones added?

For each answer, the glossary's expansions found in the reference are the expected terms and those found in the
answer are the produced ones; the score is their overlap over their union (1 when both are empty). So an answer
that expands the abbreviation correctly scores 1 however it is phrased, one that expands it wrongly ("myocardial
infarction" for PE) scores 0, and one that adds a wrong term beside the right one scores 0.5.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from pydantic import Field

from ftcore.errors import DataError
from ftcore.evaluation.domain import MetricParams, domain_metric

DEMO_GLOSSARY = Path(__file__).parents[1] / "demo" / "clinical_glossary.json"


class ClinicalTermsParams(MetricParams):
    glossary: Path = Field(DEMO_GLOSSARY, description="a JSON object: abbreviation -> expansion (default: the "
                                                      "demo's)")


@functools.cache
def _term_pattern(glossary: Path) -> re.Pattern:
    try:
        terms = json.loads(glossary.read_text(encoding="utf-8")).values()
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"clinical_terms: glossary {glossary}: {e}; give a JSON object of abbreviation -> "
                        "expansion") from None
    # Longest first, so "chronic kidney disease" wins over a shorter term inside it.
    alternatives = sorted({_normalise(t) for t in terms}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(map(re.escape, alternatives)) + r")\b")


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _terms(pattern: re.Pattern, text: str) -> set[str]:
    return set(pattern.findall(_normalise(text)))


@domain_metric("clinical_terms", params=ClinicalTermsParams)
def clinical_terms(outputs: list[str], references: list[str], prompts: list[str],
                   params: ClinicalTermsParams) -> list[float]:
    """Overlap of the glossary terms in the answer with those in the reference (1: right terms, nothing wrong)."""
    pattern = _term_pattern(params.glossary)
    scores = []
    for output, reference in zip(outputs, references, strict=True):
        expected, produced = _terms(pattern, reference), _terms(pattern, output)
        union = expected | produced
        scores.append(len(expected & produced) / len(union) if union else 1.0)
    return scores
