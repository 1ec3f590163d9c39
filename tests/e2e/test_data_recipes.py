"""The acceptance runs of the data stages: each real-data recipe in data_recipes/recipes/shared runs the flow until
clean_balance, loses no row, gives every quarantined row a reason, and shows the counts in the data card."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ftcore import tracking
from ftcore.evaluation.scorers import Scoring
from ftcore.paths import home
from ftcore.stages import Stage
from ftcore.training.jobs import TrainJob
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness", "shared_data")]
SHARED_RECIPES = REPO / "data_recipes" / "recipes" / "shared"


@pytest.mark.parametrize("recipe", ["medquad_qa.yaml", "sms_spam.yaml", "hh_rlhf_preference.yaml",
                                    "multitask_medical.yaml", "dapt_medquad.yaml"])
def test_real_data_recipe_runs_until_clean_balance_and_loses_nothing(recipe):
    from flows.finetune import finetune

    summary = finetune(str(SHARED_RECIPES / recipe), [], Stage.clean_balance)
    written = json.loads((home() / "runs" / summary["run_id"] / "summary.json").read_text())
    collect, clean = written["stages"]["collect"], written["stages"]["clean_balance"]
    for stage in (collect, clean):
        m = stage["metrics"]
        assert stage["status"] == "completed"
        assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
        quarantine = pd.read_parquet(stage["artifacts"]["quarantine"])
        assert len(quarantine) == m["rows_quarantined"]
        assert quarantine["reason"].str.len().gt(0).all() and quarantine["step"].str.len().gt(0).all()
    m = clean["metrics"]
    assert m["rows_in"] == collect["metrics"]["rows_kept"]
    steps = [k.removesuffix(".rows_in") for k in m if k.endswith(".rows_in")]
    assert steps and all(m[f"{s}.rows_in"] == m[f"{s}.rows_kept"] + m[f"{s}.rows_quarantined"] for s in steps)
    assert len(pd.read_parquet(clean["artifacts"]["dataset"])) == m["rows_train"] + m["rows_validation"] + \
        m["rows_test"]
    card = Path(clean["artifacts"]["data_card"]).read_text(encoding="utf-8")
    assert f"**{m['rows_in']:.0f} rows in = {m['rows_kept']:.0f} kept + {m['rows_quarantined']:.0f} quarantined.**" \
        in card
    for s in steps:
        assert f"| {s} | {m[f'{s}.rows_in']:.0f} | {m[f'{s}.rows_kept']:.0f} | {m[f'{s}.rows_quarantined']:.0f} |" \
            in card


@pytest.mark.slow
def test_the_spam_recipe_fine_tunes_the_pretrained_minilm_with_lora_and_class_weights(tmp_path):
    """The acceptance recipe, shortened to a few steps: the real encoder gets a two-class head, LoRA trains with the
    class-weighted loss, and the evaluation has per-class F1 for the model and the TF-IDF baseline. (The full run,
    where the model beats the baseline, takes ~10 minutes: docs/benchmarks.md.)"""
    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import CollectJob, collect_stage
    from ftcore.evaluation.evaluate import evaluate_models
    from ftcore.jobs import clean_job
    from ftcore.models.init import InitJob, init_stage
    from ftcore.recipe import load_recipe
    from ftcore.training.train import train_stage

    recipe = load_recipe(SHARED_RECIPES / "sms_spam.yaml", ["train.max_steps=16", "train.logging_steps=1"])
    collected = collect_stage(CollectJob(data=recipe.data, sources={}), tmp_path / "collect")
    dataset = clean_balance_stage(clean_job(recipe, collected), tmp_path / "clean")
    loss = json.loads(dataset.artifacts["loss"].read_text())
    assert loss["type"] == "weighted_cross_entropy" and loss["class_weights"]["spam"] > loss["class_weights"]["ham"]
    base = init_stage(InitJob(model=recipe.model, method=recipe.method, dataset=dataset, objective=recipe.spec),
                      tmp_path / "init")
    assert base.classes == ["ham", "spam"] and base.metrics["total_params"] > 22e6
    assert base.metrics["trainable_fraction"] < 0.05
    trained = train_stage(TrainJob(base=base, dataset=dataset, train=recipe.train, objective=recipe.spec),
                          tmp_path / "train")
    assert trained.metrics["train_loss_last"] < trained.metrics["train_loss_first"]
    config = json.loads((trained.model_path / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "ham", "1": "spam"}
    scoring = Scoring(splits=dataset.splits, evaluate=recipe.evaluate, objective=recipe.spec)
    evaluation = evaluate_models({"candidate": trained.model_path}, scoring, tmp_path / "eval")
    assert {"f1_spam", "f1_ham", "macro_f1", "macro_f1.ci_low", "tfidf.f1_spam"} <= evaluation.metrics.keys()
    assert evaluation.metrics["tfidf.f1_spam"] > 0.85  # the baseline to beat is a strong one
    # Logged as the flow logs the evaluate stage: the confusion matrix image and the report land in MLflow.
    run_id = tracking.start_pipeline_run("sms-spam", "evaluate", {"name": "sms-spam"}, {})
    tracking.log_stage(run_id, "evaluate", evaluation.metrics, evaluation.artifacts, cached=False)
    logged = {f.path for f in tracking.client().list_artifacts(run_id, "stages/evaluate")}
    assert {"stages/evaluate/confusion_matrix.png", "stages/evaluate/report.html"} <= logged
    metrics = tracking.client().get_run(run_id).data.metrics
    assert metrics[tracking.metric_key("f1_spam", "evaluate")] == evaluation.metrics["f1_spam"]
