"""The evaluate metric modules that ship in ftcore (loaded by local path, offline) agree with the libraries they
wrap, score any subset of examples as the corpus metric of that subset, and give seeded bootstrap intervals."""

from __future__ import annotations

import functools

import evaluate
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from ftcore.evaluation.bootstrap import bootstrap_interval, perplexity_of
from ftcore.evaluation.example_metrics import GENERATION_METRICS, MODULES, score
from ftcore.evaluation.scorers import Scoring
from ftcore.objectives import GENERATION, OBJECTIVES
from ftcore.text_metrics import exact_match, token_f1
from ftcore.training.jobs import TrainJob

PREDICTIONS = ["blood pressure", "the heart rate", "myocardial infarction is", "kidney", "as needed", "by mouth now"]
REFERENCES = ["blood pressure", "heart rate", "myocardial infarction", "chronic kidney disease", "as needed",
              "by mouth"]


def test_every_metric_loads_through_evaluate_from_the_package_folder():
    for name, (module, config) in GENERATION_METRICS.items():
        metric = evaluate.load(str(MODULES / module), config_name=config)
        result = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
        assert set(result) == {config, "stats"} and len(result["stats"]) == len(PREDICTIONS), name


def test_the_modules_agree_with_the_libraries_they_wrap():
    assert score("exact_match", PREDICTIONS, REFERENCES)[0] == np.mean(list(map(exact_match, PREDICTIONS,
                                                                               REFERENCES)))
    assert score("token_f1", PREDICTIONS, REFERENCES)[0] == pytest.approx(np.mean(list(map(token_f1, PREDICTIONS,
                                                                                          REFERENCES))))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for kind in ("rouge1", "rougeL"):
        expected = np.mean([scorer.score(r, p)[kind].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)])
        assert score(kind, PREDICTIONS, REFERENCES)[0] == pytest.approx(expected)
    bleu = sacrebleu.metrics.BLEU(effective_order=True).corpus_score(PREDICTIONS, [REFERENCES]).score
    assert score("bleu", PREDICTIONS, REFERENCES)[0] == pytest.approx(bleu)
    assert score("chrf", PREDICTIONS, REFERENCES)[0] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS,
                                                                                             [REFERENCES]).score)


@pytest.mark.parametrize("name", ["bleu", "chrf", "rouge2"])
def test_a_subset_of_rows_scores_as_the_corpus_metric_of_that_subset(name):
    _, rows, metric = score(name, PREDICTIONS, REFERENCES)
    subset = [0, 2, 5]
    alone = score(name, [PREDICTIONS[i] for i in subset], [REFERENCES[i] for i in subset])[0]
    assert metric.aggregate(rows[subset]) == pytest.approx(alone)


def test_bootstrap_intervals_bracket_the_estimate_shrink_with_data_and_repeat():
    rng = np.random.default_rng(1)
    small, large = rng.random(30), rng.random(3000)
    low, high = bootstrap_interval(small, np.mean, 500, 0.95)
    assert low < small.mean() < high
    large_low, large_high = bootstrap_interval(large, np.mean, 500, 0.95)
    assert large_high - large_low < (high - low) / 5  # about 1/sqrt(100) as wide
    assert bootstrap_interval(small, np.mean, 500, 0.95) == (low, high)  # seeded
    assert all(np.isnan(bootstrap_interval(small[:1], np.mean, 500, 0.95)))
    assert all(np.isnan(bootstrap_interval(small, np.mean, 0, 0.95)))


def test_perplexity_is_recomputed_from_summed_likelihoods():
    rows = np.array([[2.0, 1.0], [6.0, 3.0]])  # (summed nll, tokens) per example
    assert perplexity_of(rows) == pytest.approx(np.exp(8.0 / 4.0))


def test_the_evaluate_stage_reports_every_metric_with_its_interval_overall_and_per_task(tmp_path):
    import pandas as pd

    from ftcore.evaluation.evaluate import evaluate_models
    from ftcore.evaluation.intervals import metric_key
    from ftcore.training.train import train_stage
    from tests.ftcore.test_objectives import prepare

    recipe, dataset, base = prepare(tmp_path, "multitask", "train.max_steps=40", "evaluate.max_new_tokens=8")
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=OBJECTIVES["multitask"]),
                          tmp_path / "train")
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=OBJECTIVES["multitask"])
    out = evaluate_models({"base": base.base_path, "candidate": trained.model_path}, scoring,
                          tmp_path / "evaluate")
    m = out.metrics
    predictions = pd.read_json(out.predictions_path, lines=True)
    # The objective's metrics (every text metric module's, and perplexity) are scored below; the image answers'
    # modules (error rates, CIDEr) are tested in test_image_text_metrics.py.
    assert recipe.evaluate.metrics == list(OBJECTIVES["multitask"].metrics)
    assert set(GENERATION) <= set(recipe.evaluate.metrics) <= {*GENERATION_METRICS, "perplexity"}
    assert "perplexity" in recipe.evaluate.metrics
    for name in ("base", "candidate"):
        key = functools.partial(metric_key, name)  # the candidate's metrics carry no prefix
        for metric in recipe.evaluate.metrics:
            value, low, high = (m[key(f"{metric}{suffix}")] for suffix in ("", ".ci_low", ".ci_high"))
            assert low <= value + 1e-9 and value <= high + 1e-9, (name, metric, low, value, high)
            for task, rows in predictions.groupby("task"):  # an interval needs two rows at least
                value, low, high = (m[key(f"{metric}.{task}{suffix}")] for suffix in ("", ".ci_low", ".ci_high"))
                assert (low <= value + 1e-9 and value <= high + 1e-9) or (len(rows) < 2 and np.isnan(low)), \
                    (name, metric, task, low, value, high)
            assert {key(f"{metric}.expand"), key(f"{metric}.spam")} <= m.keys()
        # The per-example scores in the predictions file average to the reported metric, overall and per task.
        for metric in ("exact_match", "token_f1", "rougeL"):
            assert predictions[f"{name}.{metric}"].mean() == pytest.approx(m[key(metric)])
            for task, rows in predictions.groupby("task"):
                assert rows[f"{name}.{metric}"].mean() == pytest.approx(m[key(f"{metric}.{task}")])
    assert m["token_f1"] > m["base.token_f1"]
