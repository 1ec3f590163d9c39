"""Exact match and token F1 with SQuAD's answer normalisation (lowercase, no punctuation or articles): config
`exact_match` or `token_f1`."""

import datasets  # noqa: F401  evaluate's loader reads the imports of a module; keep these two on separate lines
import evaluate  # noqa: F401

from ftcore.evaluation.example_metrics import ExampleMetric
from ftcore.text_metrics import exact_match, token_f1

_SCORERS = {"exact_match": exact_match, "token_f1": token_f1}


class Squad(ExampleMetric):
    """SQuAD-normalised exact match or token F1 of each prediction against its reference."""

    def statistics(self, predictions, references):
        fn = _SCORERS[self.config_name]
        return [fn(p, r) for p, r in zip(predictions, references, strict=True)]
