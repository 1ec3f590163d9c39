import math

import pytest

from ftcore.text_metrics import exact_match, normalize_answer, perplexity, token_f1


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("Myocardial infarction.", "myocardial infarction", 1.0),
    ("the blood pressure", "blood pressure", 1.0),
    ("blood", "blood pressure", 0.0),
    ("", "blood pressure", 0.0),
])
def test_exact_match_uses_squad_normalisation(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


def test_token_f1_gives_partial_credit():
    assert token_f1("chronic kidney", "chronic kidney disease") == pytest.approx(0.8)
    assert token_f1("kidney", "heart") == 0.0
    assert token_f1("", "") == 1.0


def test_normalize_answer():
    assert normalize_answer("  The  BP, (blood pressure)!") == "bp blood pressure"


def test_perplexity_is_exp_of_mean_nll():
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    assert math.isnan(perplexity(0.0, 0))
