"""Balancing the train split by a label or category column (docs/balancing.md).

- oversample / undersample: imbalanced-learn samplers over row indices (text cannot be interpolated, so the
  samplers choose rows rather than synthesise them).
- smote: for classifiers on sentence embeddings: SMOTE interpolates new minority vectors between real ones.
- class_weights / focal_loss: rows are left as they are; the training loss weights the classes instead, from the
  spec this stage hands on (`BalanceResult.loss`, written as loss.json).

Then, optionally, augmentation adds edited variants of train rows (`augment_rows`; the augmenters themselves:
ftcore/data/augment.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftcore.data.augment import batch_edit, edit_inputs
from ftcore.data.config import AugmentConfig, BalanceConfig
from ftcore.data.embeddings import embed_texts, encoder_dir
from ftcore.errors import DataError
from ftcore.plugins import UnknownPlugin

CLASSIFICATION_FORMAT = "text_label"
EMBEDDING = "embedding"
# One end of the segment a synthetic vector lies on is among its 5 nearest real rows of the class: on SMS spam
# embeddings it was the nearest in 90% of cases and never further than the 4th.
ENDPOINT_CANDIDATES = 5
ON_SEGMENT_TOLERANCE = 1e-4  # |s-a| + |s-b| - |a-b|, for unit-length embeddings; measured ~1e-7 on true pairs


@dataclass(frozen=True)
class BalanceResult:
    frame: pd.DataFrame  # the train rows to write
    metrics: dict[str, float]
    loss: dict | None  # the training loss's spec (loss.json) for class_weights and focal_loss, else None


def balance_rows(train: pd.DataFrame, cfg: BalanceConfig, data_format: str) -> BalanceResult:
    """Rebalance (or weight) the train split, then augment it if asked.

    Metrics: `<column>.<class>.before/after` (after == before for the weight strategies unless augmentation adds
    rows), `<column>.<class>.weight` for the weight strategies, `synthetic_rows` and `smote.k_neighbors` for smote,
    `augmented_rows` when augmenting.
    """
    check_format(cfg, data_format)
    labels = _labels(train, cfg) if cfg.strategy != "none" or cfg.augment.only_minority else None
    frame, metrics = _resample(train, labels, cfg)
    if cfg.augment.enabled:
        frame = augment_rows(frame, cfg.augment, data_format, cfg.seed,
                             None if labels is None else frame[cfg.column].astype(str))
        metrics["augmented_rows"] = float(frame["augmented"].sum())
    if labels is not None:
        metrics |= _counts(labels, f"{cfg.column}.{{}}.before")
        metrics |= _counts(frame[cfg.column].astype(str), f"{cfg.column}.{{}}.after")
    if not cfg.weighs_loss:
        return BalanceResult(frame, metrics, None)
    weights = class_weights(frame[cfg.column].astype(str))
    metrics |= {f"{cfg.column}.{cls}.weight": w for cls, w in weights.items()}
    return BalanceResult(frame, metrics, loss_spec(cfg, weights))


def with_features(frame: pd.DataFrame, cfg: BalanceConfig) -> pd.DataFrame:
    """A validation or test split with the features the train split got: the `embedding` column for smote (a
    classifier trained on embeddings is evaluated on embeddings of the same encoder); unchanged otherwise."""
    if cfg.strategy != "smote":
        return frame
    return frame.assign(**{EMBEDDING: list(embed_texts(frame["text"].astype(str).tolist(),
                                                       encoder_dir(cfg.embedding_model)))})


def class_weights(labels: pd.Series) -> dict[str, float]:
    """sklearn's "balanced" weights, n_rows / (n_classes * class_count): each class weighs as much in total."""
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.array(sorted(labels.unique()))
    weights = compute_class_weight("balanced", classes=classes, y=labels.to_numpy())
    return {str(cls): float(w) for cls, w in zip(classes, weights, strict=True)}


def loss_spec(cfg: BalanceConfig, weights: dict[str, float]) -> dict:
    """What ftcore.training.losses.loss_from_spec builds the classifier's loss from."""
    spec = {"class_weights": weights, "classes": sorted(weights)}
    if cfg.strategy == "focal_loss":
        return {"type": "focal", "gamma": cfg.focal_gamma, **spec}
    return {"type": "weighted_cross_entropy", **spec}


def augment_rows(frame: pd.DataFrame, cfg: AugmentConfig, data_format: str, seed: int,
                 labels: pd.Series | None = None) -> pd.DataFrame:
    """The rows of `frame` (augmented=False), then their variants (augmented=True, augmented_from = the position
    of the row the variant was made from), each edited by the recipe's operations in order (ftcore/data/augment.py).
    `labels`, aligned with `frame`, are needed for only_minority."""
    sources = (_minority_sources(labels, cfg.copies, seed) if cfg.only_minority
               else np.tile(np.arange(len(frame)), cfg.copies))
    variants = frame.iloc[sources].reset_index(drop=True)
    rng = random.Random(seed)
    try:  # every operation looked up before any runs; the recipe's check at load time makes this rare
        edits = [batch_edit(name, cfg.p, rng) for name in cfg.operations]
    except UnknownPlugin as e:
        raise DataError(f"balance.augment.operations: {e}") from None
    for edit in edits:
        variants = edit_inputs(variants, data_format, edit)
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


def check_format(cfg: BalanceConfig, data_format: str) -> None:
    """DataError when the strategy cannot apply to the data format (also checked when the recipe loads)."""
    if data_format == CLASSIFICATION_FORMAT:
        return
    if cfg.strategy == "smote":
        raise DataError("balance.strategy smote synthesises feature vectors, not text: it applies to text_label "
                        f"(classification on embeddings); for {data_format} use oversample")
    if cfg.weighs_loss:
        raise DataError(f"balance.strategy {cfg.strategy} weights the classes of a classification loss: it applies "
                        f"to text_label; for {data_format} use oversample")


def _resample(train: pd.DataFrame, labels: pd.Series | None, cfg: BalanceConfig) -> tuple[pd.DataFrame, dict]:
    if cfg.strategy in ("oversample", "undersample"):
        return _sample_rows(train, labels, cfg), {}
    if cfg.strategy == "smote":
        return _smote(train, labels, cfg)
    return train, {}


def _sample_rows(train: pd.DataFrame, labels: pd.Series, cfg: BalanceConfig) -> pd.DataFrame:
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    sampler = (RandomOverSampler if cfg.strategy == "oversample" else RandomUnderSampler)(random_state=cfg.seed)
    indices, _ = sampler.fit_resample(np.arange(len(train)).reshape(-1, 1), labels)
    return train.iloc[indices.ravel()].reset_index(drop=True)


def _smote(train: pd.DataFrame, labels: pd.Series, cfg: BalanceConfig) -> tuple[pd.DataFrame, dict[str, float]]:
    """Real rows (synthetic=False) with their embeddings, then SMOTE's rows: synthetic=True, the class, an empty
    text, the vector, and `synthetic_from`, the positions of the two real rows it lies between."""
    from imblearn.over_sampling import SMOTE

    counts = labels.value_counts()
    if counts.min() < 2:
        raise DataError(f"balance.strategy smote: class {counts.idxmin()!r} has 1 row in the train split, and SMOTE "
                        "interpolates between a row and its neighbours of the same class (k_neighbors needs at least "
                        "2 rows per class); use oversample")
    # The smallest class bounds the neighbours SMOTE can take; the value used is reported, not an error, because
    # split sizes follow the data rather than the recipe.
    k = min(cfg.k_neighbors, int(counts.min()) - 1)
    real = embed_texts(train["text"].astype(str).tolist(), encoder_dir(cfg.embedding_model))
    x, y = SMOTE(k_neighbors=k, random_state=cfg.seed).fit_resample(real, train[cfg.column].to_numpy())
    new, new_labels = x[len(train):].astype(np.float32), y[len(train):]  # SMOTE returns the real rows first
    synthetic = pd.DataFrame({
        "text": "", cfg.column: new_labels, EMBEDDING: list(new), "synthetic": True,
        "synthetic_from": _smote_parents(new, new_labels, real, train[cfg.column].to_numpy()),
    })
    frame = _append(train.assign(**{EMBEDDING: list(real), "synthetic": False, "synthetic_from": None}), synthetic)
    return frame, {"synthetic_rows": float(len(new)), "smote.k_neighbors": float(k)}


def _smote_parents(new: np.ndarray, new_labels: np.ndarray, real: np.ndarray,
                   real_labels: np.ndarray) -> list[list[int] | None]:
    """The positions of the two real rows each synthetic vector lies between (imbalanced-learn does not report
    them), or None where none is found."""
    from sklearn.neighbors import NearestNeighbors

    parents: list[list[int] | None] = [None] * len(new)
    for cls in np.unique(new_labels):
        rows, todo = np.flatnonzero(real_labels == cls), np.flatnonzero(new_labels == cls)
        vectors = real[rows].astype(np.float64)  # float32 rounding would blur the on-segment test
        _, near = NearestNeighbors(n_neighbors=min(ENDPOINT_CANDIDATES, len(rows))).fit(vectors).kneighbors(new[todo])
        for i, candidates in zip(todo, near, strict=True):
            pair = _segment_through(new[i].astype(np.float64), candidates, vectors)
            if pair is not None:
                parents[i] = sorted(int(rows[j]) for j in pair)
    return parents


def _segment_through(point: np.ndarray, candidates: np.ndarray, vectors: np.ndarray) -> tuple[int, int] | None:
    """(a, b), rows of `vectors` with `point` on the segment between them (|p-a| + |p-b| = |a-b|), where a is one
    of `candidates` (the point's nearest rows: one end of the segment is nearly always among them)."""
    to_point = np.linalg.norm(vectors - point, axis=1)
    for a in candidates:
        detour = to_point[a] + to_point - np.linalg.norm(vectors - vectors[a], axis=1)
        detour[a] = np.inf
        b = int(detour.argmin())
        if detour[b] < ON_SEGMENT_TOLERANCE:
            return int(a), b
    return None


def _append(real: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    """`real` then `added`; integer and boolean columns the added rows lack become nullable rather than float or
    object (so `source_row` stays an integer)."""
    frame = pd.concat([real, added], ignore_index=True)
    for column in real.columns.difference(added.columns):
        kind = real[column].dtype.kind
        if kind in "iub":
            frame[column] = frame[column].astype("boolean" if kind == "b" else "Int64")
    return frame


def _labels(train: pd.DataFrame, cfg: BalanceConfig) -> pd.Series:
    if cfg.column not in train.columns:
        raise DataError(f"balance.column: no column {cfg.column!r} in the data; columns: {', '.join(train.columns)}")
    labels = train[cfg.column].astype(str)
    if labels.nunique() < 2:
        needs, instead = ((cfg.strategy, "strategy: none") if cfg.strategy != "none"
                          else ("augment.only_minority", "only_minority: false"))
        raise DataError(f"balance: column {cfg.column!r} has one class ({labels.iloc[0]!r}) in the train split; "
                        f"{needs} needs at least two (or use {instead})")
    return labels


def _counts(labels: pd.Series, key: str) -> dict[str, float]:
    return {key.format(cls): float(n) for cls, n in labels.value_counts().items()}
