"""Corpus BLEU and chrF (sacrebleu, default settings; BLEU with effective order so short answers score): config
`bleu` or `chrf`, on a 0-100 scale. The per-example rows are sacrebleu's sufficient statistics (n-gram matches and
totals), so any subset of examples gets its true corpus score: what the bootstrap intervals resample."""

import datasets  # noqa: F401  evaluate's loader reads the imports of a module; keep these two on separate lines
import evaluate  # noqa: F401

from ftcore.evaluation.example_metrics import ExampleMetric


class SacreBleu(ExampleMetric):
    """Corpus BLEU or chrF of the predictions against the references."""

    def _scorer(self):
        from sacrebleu.metrics import BLEU, CHRF

        return BLEU(effective_order=True) if self.config_name == "bleu" else CHRF()

    def statistics(self, predictions, references):
        return self._scorer()._extract_corpus_statistics(predictions, [references])

    def aggregate(self, rows):
        if not len(rows):
            return float("nan")
        totals = [int(x) if self.config_name == "bleu" else x for x in rows.sum(axis=0)]
        return float(self._scorer()._compute_score_from_stats(totals).score)
