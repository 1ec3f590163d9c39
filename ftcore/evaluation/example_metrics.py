"""Metrics as `evaluate` modules that ship in the package (ftcore/evaluation/metric_modules/, loaded by local path:
hub metrics cannot be fetched offline), each also able to score any subset of the examples, which the bootstrap
confidence intervals need.

A module's metric subclasses `ExampleMetric`: `statistics(predictions, references)` returns one row of numbers per
example (a score, or sufficient statistics such as BLEU's n-gram counts) and `aggregate(rows)` turns any subset of
rows into the metric. `compute()` returns the metric over all examples and the rows (`stats`).
"""

from __future__ import annotations

import abc
import functools
from pathlib import Path

import numpy as np

MODULES = Path(__file__).with_name("metric_modules")
# Recipe metric name -> (module file, evaluate config name).
GENERATION_METRICS: dict[str, tuple[str, str | None]] = {
    "exact_match": ("squad.py", "exact_match"),
    "token_f1": ("squad.py", "token_f1"),
    "rouge1": ("rouge.py", "rouge1"),
    "rouge2": ("rouge.py", "rouge2"),
    "rougeL": ("rouge.py", "rougeL"),
    "bleu": ("sacrebleu_metrics.py", "bleu"),
    "chrf": ("sacrebleu_metrics.py", "chrf"),
    "cer": ("error_rates.py", "cer"),
    "wer": ("error_rates.py", "wer"),
    "cer_normalized": ("error_rates.py", "cer_normalized"),
    "wer_normalized": ("error_rates.py", "wer_normalized"),
    "cider": ("cider.py", "cider"),
}


@functools.cache
def _metric_base():
    import datasets
    import evaluate

    class ExampleMetric(evaluate.Metric, abc.ABC):
        """An evaluate metric over (prediction, reference) strings with per-example statistics."""

        def _info(self):
            return evaluate.MetricInfo(
                description=(self.__doc__ or "").strip(), citation="", inputs_description="predictions, references",
                features=datasets.Features({"predictions": datasets.Value("string"),
                                            "references": datasets.Value("string")}))

        def _compute(self, predictions, references):
            rows = np.asarray(self.statistics(list(predictions), list(references)), dtype=float)
            return {self.config_name: self.aggregate(rows), "stats": rows}

        @abc.abstractmethod
        def statistics(self, predictions: list[str], references: list[str]) -> list: ...

        def aggregate(self, rows: np.ndarray) -> float:
            """The mean of per-example scores; metrics with sufficient statistics override it."""
            return float(rows.mean()) if len(rows) else float("nan")

    return ExampleMetric


def __getattr__(name: str):
    # `evaluate` and `datasets` are imported only when a metric module asks for the base class.
    if name == "ExampleMetric":
        return _metric_base()
    raise AttributeError(name)


@functools.cache
def load_metric(name: str):
    """The evaluate module of a recipe metric name, loaded once per process from the package."""
    import evaluate

    module, config = GENERATION_METRICS[name]
    return evaluate.load(str(MODULES / module), config_name=config)


def score(name: str, predictions: list[str], references: list[str]) -> tuple[float, np.ndarray, object]:
    """(value over all examples, per-example rows, the metric) for a generation metric."""
    metric = load_metric(name)
    result = metric.compute(predictions=predictions, references=references)
    return result[metric.config_name], result["stats"], metric
