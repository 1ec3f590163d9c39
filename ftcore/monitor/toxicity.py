"""The monitor's toxicity screen: the lexicon scorer, the default, needs no model. Flags outputs containing listed
terms. The lexicon and its logic live in ftcore.safety.toxicity, shared with the `filter_toxicity` cleaning step,
so training data and model outputs are judged by the same list."""

from __future__ import annotations

from ftcore.safety.toxicity import DEFAULT_TERMS, LexiconScorer

__all__ = ["DEFAULT_TERMS", "LexiconScorer"]
