"""The text-recognition and captioning metric modules (error_rates.py, cider.py), loaded through evaluate by path as
the evaluate stage loads them: hand-computed error rates summed over the corpus, any subset of rows scoring as that
subset alone, the normalisation of historical print, and CIDEr-D as coco-caption computes it."""

from __future__ import annotations

import functools
import random

import evaluate
import numpy as np
import pytest

from ftcore.evaluation.example_metrics import MODULES
from ftcore.evaluation.metric_modules.cider import cider_d
from ftcore.evaluation.metric_modules.error_rates import edit_distance, normalize_historical

ERROR_RATES = ("cer", "wer", "cer_normalized", "wer_normalized")

# "religioͤſes Bewußtſeyn" as printed (o + U+0364 COMBINING LATIN SMALL LETTER E, long s), and as transcribed today.
PRINTED = "religio\u0364\u017fes Bewu\u00dft\u017feyn"
MODERN = "religi\u00f6ses Bewu\u00dftseyn"

# Inputs already tokenised (lowercase, no punctuation), so coco-caption's Java tokenizer is not needed: pycocoevalcap
# 1.2's Cider().compute_score(gts, res) gave the scores below on them (per image, in this order), with all the
# references, and again with only the first reference of each image.
COCO_REFERENCES = [
    ["a man is riding a horse on the beach", "a person rides a brown horse along the shore",
     "a man on a horse near the ocean"],
    ["two dogs play with a red ball in the grass", "a pair of dogs chasing a ball on a lawn"],
    ["a plate of food with broccoli and rice", "a white plate topped with rice and broccoli and chicken",
     "food on a plate"],
    ["a cat sleeping on a laptop keyboard", "a cat lies on top of an open laptop"],
    ["a red double decker bus on a city street", "a bus driving down the street"],
    ["a horse grazing in a green field", "horse in a pasture"],
]
COCO_CANDIDATES = [
    "a man riding a horse on the beach",
    "a dog a dog a dog a dog playing with a ball",  # repeated n-grams: clipped by the references' counts
    "a plate of rice and broccoli",
    "a cat sleeping on a laptop keyboard",
    "a giraffe standing in a field of tall grass next to some trees",
    "horse",
]
COCO_SCORES = [2.982634180012041, 0.42636654330353563, 2.4574762715057132, 5.665038299401451, 0.0,
               0.7510095956976458]  # mean 2.047087481653398
COCO_SCORES_FIRST_REFERENCE = [7.004630876984584, 0.4493892513572973, 3.3764481072277475, 10.0, 0.0,
                               0.479989729654275]  # mean 3.551742994203984


@functools.cache
def load(module: str, config: str):
    return evaluate.load(str(MODULES / module), config_name=config)


def compute(config: str, predictions: list[str], references: list[str]) -> tuple[float, np.ndarray, object]:
    metric = load("cider.py" if config == "cider" else "error_rates.py", config)
    result = metric.compute(predictions=predictions, references=references)
    return result[config], result["stats"], metric


def _levenshtein(a, b) -> int:
    """The textbook DP, to check the bit-parallel one against."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def test_edit_distance_agrees_with_the_textbook_dp():
    rng = random.Random(0)
    for _ in range(300):
        a, b = ("".join(rng.choice("ab c") for _ in range(rng.randint(0, 80))) for _ in range(2))
        assert edit_distance(a, b) == _levenshtein(a, b), (a, b)
        assert edit_distance(a.split(), b.split()) == _levenshtein(a.split(), b.split()), (a, b)
    assert edit_distance("kitten", "sitting") == edit_distance("sitting", "kitten") == 3


def test_error_rates_of_hand_computed_pairs():
    # kitten -> sitting: two substitutions (k/s, e/i) and one insertion (g), over the 6 characters of "kitten".
    value, rows, _ = compute("cer", ["sitting"], ["kitten"])
    assert value == pytest.approx(3 / 6) and rows.tolist() == [[3, 6]]
    # "sat" substituted by "sit" and "the" deleted, over 6 reference words.
    assert compute("wer", ["the cat sit on mat"], ["the cat sat on the mat"])[0] == pytest.approx(2 / 6)
    assert compute("cer", ["Kitten"], ["kitten"])[0] == pytest.approx(1 / 6)  # case is an error
    assert compute("cer_normalized", ["Kitten"], ["kitten"])[0] == pytest.approx(1 / 6)


def test_the_corpus_rate_sums_distances_over_lengths_not_a_mean_of_rates():
    value, rows, _ = compute("cer", ["sitting", "abcdefghij"], ["kitten", "abcdefghij"])
    assert rows.tolist() == [[3, 6], [0, 10]]
    assert value == pytest.approx(3 / 16) and value != pytest.approx((3 / 6 + 0) / 2)
    value, rows, _ = compute("wer", ["a b c", "d e f g"], ["a x", "d e f g h i j k"])
    assert rows.tolist() == [[2, 2], [4, 8]] and value == pytest.approx(6 / 10)


@pytest.mark.parametrize("config", ERROR_RATES)
def test_a_subset_of_rows_scores_as_the_corpus_rate_of_that_subset(config):
    predictions = ["sitting", "the quick brown fox", PRINTED, "", "Jahr  1848", "Wort"]
    references = ["kitten", "the quick brown dog jumps", MODERN, "not read", "Jahr 1848", ""]
    _, rows, metric = compute(config, predictions, references)
    for subset in ([0, 2, 5], [1, 3], [2, 2, 4]):  # a bootstrap resample repeats examples
        alone = compute(config, [predictions[i] for i in subset], [references[i] for i in subset])[0]
        assert metric.aggregate(rows[subset]) == pytest.approx(alone), subset


def test_empty_references_add_no_length_and_count_what_was_predicted():
    assert compute("cer", ["", "abc"], ["", "abd"])[1].tolist() == [[0, 0], [1, 3]]
    assert compute("cer", ["xy", "abc"], ["", "abd"])[0] == pytest.approx(3 / 3)
    assert compute("cer", [""], [""])[0] == 0.0  # nothing to read, nothing read
    assert compute("wer", ["word"], [""])[0] == float("inf")
    assert np.isnan(load("error_rates.py", "cer").aggregate(np.empty((0, 2))))


def test_historical_print_is_normalised_to_its_modern_form():
    assert normalize_historical(PRINTED) == MODERN
    assert compute("cer_normalized", [PRINTED], [MODERN])[0] == 0.0
    # Raw: o + U+0364 -> ö is a substitution and a deletion, and each ſ a substitution, over 21 characters.
    assert compute("cer", [PRINTED], [MODERN])[0] == pytest.approx(4 / 21)
    assert compute("wer", [PRINTED], [MODERN])[0] == 1.0 and compute("wer_normalized", [PRINTED], [MODERN])[0] == 0.0
    assert normalize_historical(" \u201eGe\u2e17\n  ſagt\u201c,\t\u201aja\u2019 \u00bbwo\u00ab Ua\u0364\ufb01 ") == (
        "\"Ge- sagt\", 'ja' \"wo\" Uäfi")
    assert normalize_historical("U\u0364ber Fraktur") == "Über Fraktur"


def test_cider_matches_pycocoevalcap_with_several_references():
    assert cider_d(COCO_CANDIDATES, COCO_REFERENCES) == pytest.approx(COCO_SCORES, abs=1e-6)


def test_the_cider_module_matches_pycocoevalcap_with_one_reference_per_example():
    value, rows, metric = compute("cider", COCO_CANDIDATES, [refs[0] for refs in COCO_REFERENCES])
    assert rows.tolist() == pytest.approx(COCO_SCORES_FIRST_REFERENCE, abs=1e-6)
    assert value == pytest.approx(3.551742994203984, abs=1e-6)
    # Each row keeps the whole set's IDF, so a subset of rows aggregates to their mean.
    assert metric.aggregate(rows[[0, 1, 3]]) == pytest.approx(np.mean(np.array(COCO_SCORES_FIRST_REFERENCE)[[0, 1, 3]]))


def test_cider_of_perfect_and_unrelated_captions():
    references = ["A man rides a horse.", "Two dogs play in the snow!", "a plate of rice and broccoli"]
    perfect = compute("cider", references, references)[0]
    assert perfect > 0
    # Punctuation and case do not count.
    restyled = ["a man rides a horse", "TWO DOGS, PLAY IN THE SNOW", references[2]]
    assert compute("cider", restyled, references)[0] == pytest.approx(perfect)
    assert compute("cider", ["green car parked", "an empty kitchen", "blue sky"], references)[0] == 0.0
