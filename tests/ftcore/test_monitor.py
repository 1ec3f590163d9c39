"""The monitor's parts: window metrics, toxic outputs, objectives, drift, canaries (against a loopback endpoint), its
config and the report. The stage and the scheduled flow are in test_monitor_runs.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydantic import ValidationError

from ftcore.errors import RecipeError, UserError
from ftcore.monitor.assess import assess
from ftcore.monitor.canaries import answers, ask_canaries, load_canaries
from ftcore.monitor.config import DriftConfig, MonitorConfig, Objectives
from ftcore.monitor.drift import measure_drift
from ftcore.monitor.endpoint import Endpoint
from ftcore.monitor.objectives import BREACHED, MET, NOT_MEASURED, check_objectives
from ftcore.monitor.report import render_html, render_markdown
from ftcore.monitor.toxicity import toxic_flags
from ftcore.monitor.window import answered_outputs, logged_inputs, traffic_metrics
from ftcore.recipe import load_recipe
from ftcore.safety.config import ToxicityScreenConfig
from tests.conftest import DEMO_RECIPE
from tests.ftcore.monitor_fixtures import (
    CANARIES,
    DEMO,
    TEMPLATE,
    canaries_file,
    demo_prompts,
    fake_endpoint,
    planted_window,
    window,
)

LEXICON = ToxicityScreenConfig()


# --- window metrics ---------------------------------------------------------------------------------------------


def test_latency_percentiles_are_over_all_requests_and_only_5xx_count_as_errors():
    rows = window([{"latency_s": s, "status": st} for s, st in
                   [(0.1, 200)] * 90 + [(3.0, 200)] * 6 + [(0.2, 404)] * 2 + [(5.0, 503)] * 2])
    m = traffic_metrics(rows)
    assert m["requests"] == 100
    assert m["latency_p50_s"] == pytest.approx(0.1) and m["latency_p95_s"] == pytest.approx(3.0)
    assert m["latency_p99_s"] == pytest.approx(5.0)
    assert m["error_rate"] == pytest.approx(0.02) and m["client_error_rate"] == pytest.approx(0.02)
    assert traffic_metrics(window([])) == {"requests": 0.0}


def test_clients_that_left_count_in_no_error_rate():
    """A 499 (the client closed the connection before its answer) is neither the server's fault nor a refusal:
    counted as a disconnect, left out of both rates, so dropped connections cannot breach max_error_rate."""
    rows = window([{"latency_s": 0.1, "status": st} for st in [200] * 8 + [499] * 10 + [500, 400]])
    m = traffic_metrics(rows)
    assert (m["requests"], m["disconnects"]) == (20, 10)
    assert m["error_rate"] == pytest.approx(0.1) and m["client_error_rate"] == pytest.approx(0.1)
    only_left = traffic_metrics(window([{"latency_s": 0.1, "status": 499}] * 3))
    assert "error_rate" not in only_left and only_left["disconnects"] == 3


def test_logged_texts_unpack_several_inputs_and_skip_failures_and_labels():
    rows = window([{"input": "q1", "output": "a1"},
                   {"input": json.dumps(["q2", "q3"]), "output": json.dumps(["a2", "a3"])},
                   {"input": "q4", "output": None, "status": 500},
                   {"input": "t", "output": "spam", "endpoint": "classify"}])
    assert logged_inputs(rows) == ["q1", "q2", "q3", "q4", "t"]
    assert answered_outputs(rows) == ["a1", "a2", "a3"]


def test_toxic_outputs_are_judged_by_the_evaluate_scorer_and_threshold():
    outputs = ["myocardial infarction", "you idiot", "shut up, you moron"]
    assert toxic_flags(outputs, LEXICON).tolist() == [0.0, 1.0, 1.0]
    # Two lexicon hits score 0.75, one 0.5: a stricter threshold flags only the first.
    assert toxic_flags(outputs, ToxicityScreenConfig(threshold=0.7)).tolist() == [0.0, 0.0, 1.0]


def test_the_lexicon_matches_whole_words_only():
    flags = toxic_flags(["Shut up, you MORON", "shitake mushrooms and a stupidity-free answer"], LEXICON)
    assert flags.tolist() == [1.0, 0.0]


# --- objectives -------------------------------------------------------------------------------------------------


def test_each_objective_is_met_breached_or_not_measured():
    metrics = {"latency_p95_s": 2.5, "error_rate": 0.0, "canary_accuracy": 0.5}
    checks = {c.metric: c for c in check_objectives(metrics, Objectives(), {"drift_score": "too few inputs"})}
    assert [(m, c.status) for m, c in checks.items()] == [
        ("latency_p95_s", BREACHED), ("error_rate", MET), ("toxic_rate", NOT_MEASURED),
        ("canary_accuracy", BREACHED), ("drift_score", NOT_MEASURED)]
    assert checks["drift_score"].reason == "too few inputs"
    assert checks["canary_accuracy"].objective == "≥ 0.8" and checks["latency_p95_s"].objective == "≤ 2"
    exactly_at_the_limit = check_objectives({"latency_p95_s": 2.0}, Objectives(), {})
    assert exactly_at_the_limit[0].status == MET


# --- drift ------------------------------------------------------------------------------------------------------


def test_drift_is_low_for_more_of_the_same_and_high_for_other_inputs():
    prompts = demo_prompts()
    training, held_out = prompts[:200], prompts[200:240]
    same = measure_drift(held_out, training, DriftConfig())
    assert set(same.parts) == {"length", "vocabulary", "embedding"}  # the MiniLM package is a dependency
    assert same.score < Objectives().max_drift_score  # chance alone stays under the default objective
    shopping = [TEMPLATE.replace("{prompt}", q) for q in (
        "Where is my parcel?", "Can I pay for the shoes in instalments?", "Is the blue jacket in stock in size M?",
        "How do I return a broken kettle?", "Do you deliver to Norway?")] * 8
    other = measure_drift(shopping, training, DriftConfig())
    assert other.score > 0.7 and other.score == max(other.parts.values())


def test_drift_needs_enough_inputs_and_a_training_side():
    prompts = demo_prompts()
    few = measure_drift(prompts[:5], prompts[5:], DriftConfig(min_inputs=20))
    assert few.score is None and "fewer than monitor.drift.min_inputs (20)" in few.note
    assert measure_drift(prompts[:30], [], DriftConfig()).score is None
    lexical = measure_drift(prompts[:30], prompts[30:], DriftConfig(embeddings=False))
    assert set(lexical.parts) == {"length", "vocabulary"}


# --- canaries, against a loopback endpoint --------------------------------------------------------------------


def test_an_answer_is_right_when_it_contains_the_expected_words():
    assert answers(" The MI here is Myocardial infarction.", "myocardial infarction")
    assert not answers("myocardial", "myocardial infarction")
    assert not answers("hypertensions", "hypertension")  # whole words only


def test_canaries_are_asked_as_completions_written_with_the_prompt_template(tmp_path):
    canaries = load_canaries(canaries_file(tmp_path / "c.jsonl", CANARIES))
    replies = {TEMPLATE.replace("{prompt}", CANARIES[0][0]): " myocardial infarction",
               TEMPLATE.replace("{prompt}", CANARIES[1][0]): " It means blood pressure.",
               CANARIES[2][0]: "chronic obstructive pulmonary disease"}  # asked without the template: never matched
    with fake_endpoint(replies) as url:
        results = ask_canaries(Endpoint(url), canaries, TEMPLATE, 16)
    assert [r.correct for r in results] == [True, True, False]
    assert results[2].output == "no idea" and results[2].error is None


def test_chat_and_classifier_endpoints_are_asked_their_own_way(tmp_path):
    canaries = load_canaries(canaries_file(tmp_path / "c.jsonl", [("free prize, call now", "spam"),
                                                                   ("see you at 5", "ham")]))
    with fake_endpoint({"free prize, call now": "spam"}, kind="classifier") as url:
        assert [r.correct for r in ask_canaries(Endpoint(url), canaries, TEMPLATE, 8)] == [True, True]
    with fake_endpoint({CANARIES[0][0]: "myocardial infarction"}) as url:
        [result] = ask_canaries(Endpoint(url), load_canaries(canaries_file(tmp_path / "m.jsonl", CANARIES[:1])),
                                None, 8)
    assert result.correct


def test_a_canary_the_endpoint_fails_to_answer_is_a_wrong_answer(tmp_path):
    canaries = load_canaries(canaries_file(tmp_path / "c.jsonl", CANARIES))
    with fake_endpoint({}, failing=frozenset({"/v1/completions"})) as url:
        results = ask_canaries(Endpoint(url), canaries, TEMPLATE, 8)
    assert not any(r.correct for r in results) and "HTTP 500" in results[0].error
    down = ask_canaries(Endpoint(url, timeout_s=2), canaries, TEMPLATE, 8)  # the server has stopped
    assert all(r.error.startswith("health: GET /health") for r in down)


def test_a_bad_canaries_file_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "yes"}\n{"question": "no answer"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl line 2: expected a JSON object"):
        load_canaries(bad)
    bad.write_text('{"question": "q", "answer": "the"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 1: the answer has no words"):
        load_canaries(bad)


# --- config -----------------------------------------------------------------------------------------------------


def test_monitor_config_windows_and_relative_canaries(tmp_path):  # its defaults: test_config.py (docs/recipes.md)
    assert MonitorConfig(window="30m").window == timedelta(minutes=30)
    assert MonitorConfig(window=90).window == timedelta(seconds=90)
    with pytest.raises(ValidationError, match="window must be positive"):
        MonitorConfig(window="0m")
    with pytest.raises(ValidationError, match="extra"):
        MonitorConfig(max_latency_s=2.0)
    recipe = load_recipe(DEMO_RECIPE, ["monitor.retrain={parameters: {epochs: 1}}"])
    assert recipe.monitor.canaries == (DEMO / "clinical_canaries.jsonl").resolve()
    assert recipe.monitor.retrain.deployment == "retrain/retrain"
    with pytest.raises(RecipeError, match=r"monitor.canaries: .*missing.jsonl not found"):
        load_recipe(DEMO_RECIPE, ["monitor.canaries=missing.jsonl"])


def test_the_demo_canaries_are_the_glossary():
    glossary = json.loads((DEMO / "clinical_glossary.json").read_text())
    canaries = load_canaries(DEMO / "clinical_canaries.jsonl")
    assert sorted(c.answer for c in canaries) == sorted(glossary.values())


# --- the report -------------------------------------------------------------------------------------------------


def test_the_report_is_self_contained_and_marks_every_objective(tmp_path):
    canaries = ask_canaries(Endpoint("http://127.0.0.1:9", timeout_s=1), load_canaries(
        canaries_file(tmp_path / "c.jsonl", CANARIES)), TEMPLATE, 8)  # nothing listens there
    a = assess("clinical-qa", "3", "the last hour", planted_window(), demo_prompts()[30:], canaries,
               MonitorConfig(), LEXICON)
    assert a.breaches == ["latency_p95_s", "toxic_rate", "canary_accuracy"] and a.not_measured == []
    assert a.metrics["toxic_rate"] == pytest.approx(4 / 30) and a.metrics["canary_accuracy"] == 0
    page = render_html(a)
    assert page.count('src="data:image/png;base64,') == 3 and "http" not in page  # nothing fetched from elsewhere
    assert "<h1>Monitor report: clinical-qa v3</h1>" in page and "BREACHED: latency_p95_s, toxic_rate" in page
    assert page.count('class="breached">breached') == 3 and "you idiot" in page
    markdown = render_markdown(a)
    assert "| latency p95 (s) (`latency_p95_s`) | 3.5 | ≤ 2 | breached |" in markdown


def test_what_could_not_be_measured_says_so():
    a = assess("m", "1", "the last hour", window([]), [], None, MonitorConfig(), None)
    assert a.breaches == [] and a.not_measured == ["latency_p95_s", "error_rate", "toxic_rate", "canary_accuracy",
                                                   "drift_score"]
    reasons = {c.metric: c.reason for c in a.checks}
    assert reasons["toxic_rate"] == "evaluate.safety.toxicity is off in the recipe"
    assert reasons["canary_accuracy"] == "no monitor.canaries in the recipe"
    assert "all measured objectives met; not measured: latency_p95_s" in render_html(a)
