"""ROUGE-1, ROUGE-2 and ROUGE-L F-measure (Google's rouge-score, with stemming): config `rouge1`, `rouge2` or
`rougeL`. The corpus score is the mean of the per-example F-measures, as rouge-score's aggregation reports it."""

import datasets  # noqa: F401  evaluate's loader reads the imports of a module; keep these two on separate lines
import evaluate  # noqa: F401

from ftcore.evaluation.example_metrics import ExampleMetric


class Rouge(ExampleMetric):
    """ROUGE F-measure of each prediction against its reference."""

    def statistics(self, predictions, references):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([self.config_name], use_stemmer=True)
        return [scorer.score(r, p)[self.config_name].fmeasure for p, r in zip(predictions, references, strict=True)]
