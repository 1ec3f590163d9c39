# Config (recipe metric name, for GENERATION_METRICS): cider.
"""CIDEr-D of captions (Vedantam et al. 2015, as coco-caption's `CiderScorer` computes it): config `cider`, on
coco-caption's 0-10 scale. Texts are tokenised as lowercase words with punctuation dropped: coco-caption's PTB
tokenizer needs Java, so scores on raw captions can differ slightly from coco-caption's; on captions already
tokenised that way they are the same.

The per-example rows are each example's CIDEr-D, with the document frequencies of the references of the whole
evaluated set, and the metric is their mean. A bootstrap resample therefore keeps the full set's IDF instead of
recomputing it from the resampled references: the standard approximation, as the IDF of a resample with repeated
examples would count them as separate documents. As in coco-caption, a set of one example scores 0 (every n-gram
of the references is then in every document, so none carries weight)."""

import math
import re
from collections import Counter
from collections.abc import Sequence

import datasets  # noqa: F401  evaluate's loader reads the imports of a module; keep these two on separate lines
import evaluate  # noqa: F401

from ftcore.evaluation.example_metrics import ExampleMetric

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """The lowercase words of a text; punctuation separates words and is dropped."""
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> list[float]:
    """CIDEr-D of each candidate against its references (one or more per candidate), with n-grams of 1 to `n` words
    weighted by TF-IDF, the document frequency of an n-gram being the number of examples whose references hold it.

    Per order of n-gram, the cosine similarity of the candidate's and a reference's TF-IDF vectors, with the
    candidate's weights clipped at the reference's (repeating an n-gram gains nothing) and multiplied by the Gaussian
    penalty exp(-d² / 2σ²) on their difference in length d, in words (a caption much longer or shorter than the
    reference loses), averaged over the references. The example's score is the mean over the orders, times 10."""
    if not candidates:
        return []
    candidate_grams = [_ngrams(tokenize(c), n) for c in candidates]
    reference_grams = [[_ngrams(tokenize(r), n) for r in refs] for refs in references]
    document_frequency = Counter(gram for refs in reference_grams for gram in set().union(*refs))
    log_documents = math.log(len(candidates))

    def vector(grams: Counter) -> tuple[list[dict], list[float], int]:
        """TF-IDF weights and their norm per order, and the length in words."""
        weights = [{} for _ in range(n)]
        for gram, count in grams.items():
            # An n-gram no reference holds weighs as one held by a single example, as in coco-caption.
            weights[len(gram) - 1][gram] = count * (log_documents - math.log(max(1, document_frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        # coco-caption counts bigrams (words - 1): the same difference whenever both captions have words, and with
        # an empty one the similarity is 0 whatever the penalty.
        return weights, norms, sum(count for gram, count in grams.items() if len(gram) == 1)

    scores = []
    for grams, refs in zip(candidate_grams, reference_grams, strict=True):
        weights, norms, length = vector(grams)
        total = 0.0
        for ref in refs:
            ref_weights, ref_norms, ref_length = vector(ref)
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * sigma**2))
            for order in range(n):
                if norms[order] and ref_norms[order]:
                    overlap = sum(min(w, ref_weights[order].get(gram, 0.0)) * ref_weights[order].get(gram, 0.0)
                                  for gram, w in weights[order].items())
                    total += overlap / (norms[order] * ref_norms[order]) * penalty
        scores.append(10.0 * total / n / len(refs))
    return scores


class Cider(ExampleMetric):
    """CIDEr-D of each prediction against its reference."""

    def statistics(self, predictions, references):
        return cider_d(predictions, [[r] for r in references])
