"""Objectives other than prompt/completion SFT through the whole finetune flow (Prefect test harness, MLflow on a
temporary SQLite store): every stage must understand the task, down to the registered model and the monitor."""

from __future__ import annotations

import pytest

from ftcore import tracking
from ftcore.stages import STAGES
from tests.ftcore.objective_fixtures import objective_recipe, recipe_file

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
SMALL = ["train.max_steps=20", "train.batch_size=8", "train.learning_rate=1e-2", "train.max_length=64",
         "evaluate.max_new_tokens=8", "monitor.probe_size=4", "stages.retry_delay_s=0"]


def run(tmp_path, task: str, *overrides: str) -> dict:
    from flows.finetune import finetune

    return finetune(str(recipe_file(tmp_path, objective_recipe(tmp_path / "data", task))), [*SMALL, *overrides])


def test_a_classifier_runs_every_stage_and_is_gated_against_the_tfidf_baseline(tmp_path):
    summary = run(tmp_path, "classification")
    assert {name: s["status"] for name, s in summary["stages"].items()} == {s.value: "completed" for s in STAGES}
    evaluation = summary["stages"]["evaluate"]["metrics"]
    assert {"accuracy", "macro_f1", "f1_spam", "f1_ham",
            "tfidf.macro_f1"} <= evaluation.keys()
    gate = summary["gate"]["reason"]
    assert f"macro_f1 {evaluation['macro_f1']:.4g} " in gate
    assert f"the TF-IDF + logistic regression baseline {evaluation['tfidf.macro_f1']:.4g}" in gate
    version = tracking.client().get_model_version("objective", "1")
    assert f"f1_spam {evaluation['f1_spam']:.4g}" in version.description
    monitor = summary["stages"]["monitor"]["metrics"]
    assert monitor["error_rate"] == 0  # the probes were classified, not sent to generate()
    logged = {f.path for f in tracking.client().list_artifacts(summary["mlflow_run_id"], "stages/evaluate")}
    assert {"stages/evaluate/confusion_matrix.png", "stages/evaluate/confusion_matrix.json"} <= logged


def test_a_chat_model_runs_every_stage(tmp_path):
    summary = run(tmp_path, "sft_messages")
    assert {name: s["status"] for name, s in summary["stages"].items()} == {s.value: "completed" for s in STAGES}
    evaluation = summary["stages"]["evaluate"]["metrics"]
    assert evaluation["perplexity"] < evaluation["base.perplexity"]
    assert summary["stages"]["monitor"]["metrics"]["error_rate"] == 0
