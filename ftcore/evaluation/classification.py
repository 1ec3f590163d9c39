"""Classification metrics and the no-deep-learning baseline every classifier must beat.

Metric names are fixed (other tools read them): `accuracy`, `macro_f1`, `micro_f1`, and per class `f1_<label>`,
`precision_<label>`, `recall_<label>`. The baseline is TF-IDF features (word 1-2-grams) with a class-balanced
logistic regression, trained on the same train split and scored on the same test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ftcore.evaluation.intervals import Rows


def classification_metrics(references: Sequence[str], predictions: Sequence[str],
                           labels: Sequence[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(labels)
    precision, recall, f1, _ = precision_recall_fscore_support(
        references, predictions, labels=labels, average=None, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(references, predictions)),
        "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(references, predictions, labels=labels, average="micro", zero_division=0)),
    }
    for i, label in enumerate(labels):
        metrics |= {f"f1_{label}": float(f1[i]), f"precision_{label}": float(precision[i]),
                    f"recall_{label}": float(recall[i])}
    return metrics


def classification_rows(references: Sequence[str], predictions: Sequence[str],
                        labels: Sequence[str]) -> dict[str, Rows]:
    """Per-example rows of the metrics with intervals: `accuracy` (1 when right) and `macro_f1` ((true, predicted)
    class indices, the F1 recomputed on any subset of them)."""
    from sklearn.metrics import f1_score

    index = {label: i for i, label in enumerate(labels)}
    pairs = np.array([[index[r], index[p]] for r, p in zip(references, predictions, strict=True)], dtype=float)

    def macro_f1(rows: np.ndarray) -> float:
        return float(f1_score(rows[:, 0], rows[:, 1], labels=range(len(index)), average="macro", zero_division=0))

    return {"accuracy": Rows((pairs[:, 0] == pairs[:, 1]).astype(float)), "macro_f1": Rows(pairs, macro_f1)}


def confusion(references: Sequence[str], predictions: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Rows are the true classes, columns the predicted ones, both in `labels` order."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(references, predictions, labels=list(labels))


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], title: str, path) -> None:
    """The confusion matrix as a heat map with the counts written in: true classes down, predicted across."""
    from ftcore.training.plots import pyplot

    plt = pyplot()
    size = max(3.5, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), list(labels), rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tfidf_baseline(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                   seed: int = 0) -> list[str]:
    """Predictions of TF-IDF + class-balanced logistic regression: what a classifier has to beat to be worth it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    model.fit(features, list(train_labels))
    return [str(p) for p in model.predict(vectorizer.transform(test_texts))]


def classify(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 512,
             progress: Callable[[int], object] | None = None) -> list[str]:
    """The predicted class name of each text (the model's id2label); `progress(n)` after each batch of n."""
    names = model.config.id2label
    logits = class_logits(model, tokenizer, texts, batch_size, max_length, progress)
    return [names[i] for i in logits.argmax(-1).tolist()]


def class_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 512,
                 progress: Callable[[int], object] | None = None):
    """The classifier's logits for each text (texts x classes), batched, without gradients; `progress(n)` after
    each batch of n."""
    import torch

    model.eval()
    logits = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            logits.append(model(**batch).logits.float().cpu())
        if progress is not None:
            progress(len(logits[-1]))
    return torch.cat(logits)
