"""Continual fine-tuning through the whole flow, on the shipped demo (data_recipes/recipes/continual_*.yaml): a
model learns task A (half of the clinical abbreviations), is registered as champion, and then learns task B (the
other half) starting from that champion, with and without replaying task A's training rows. Forgetting is measured
on task A's test split, which the champion's own dataset supplies (`continual.data: champion`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcore import tracking, versions

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
RECIPES = Path(__file__).parents[2] / "data_recipes" / "recipes"
QUICK = ["monitor.probe_size=2", "stages.retry_delay_s=0"]


@pytest.mark.slow
def test_replay_keeps_task_a_while_learning_task_b(tmp_path):
    from flows.finetune import finetune

    first = finetune(str(RECIPES / "continual_a.yaml"), QUICK)
    assert first["model"]["aliases"] == ["challenger", "champion"]

    results = {}
    for replay in (0.0, 0.3):
        # Both start from version 1: the first of them may become champion itself.
        summary = finetune(str(RECIPES / "continual_b.yaml"), [*QUICK, f"continual.replay={replay}", "model.version=1"])
        results[replay] = summary["stages"]["evaluate"]["metrics"]
        assert summary["stages"]["train"]["metrics"]["replayed_rows"] == (0 if replay == 0 else pytest.approx(
            0.3 / 0.7 * summary["stages"]["clean_balance"]["metrics"]["rows_train"], abs=1))
        # The gate compares with the champion scored on task B's test set, not with its own task A score.
        champion = results[replay]["champion.exact_match"]
        assert f"exact_match {results[replay]['exact_match']:.4g} " in summary["gate"]["reason"]
        assert f"champion v{1 if replay == 0 else 2} {champion:.4g}" in summary["gate"]["reason"]
        tags = tracking.client().get_model_version("clinical-abbreviations", summary["model"]["version"]).tags
        assert tags["started_from"] == "clinical-abbreviations/1"
        recorded = versions.version_stage_metrics("clinical-abbreviations", summary["model"]["version"], "evaluate")
        assert recorded["forgetting.exact_match"] == results[replay]["forgetting.exact_match"]

    for replay, e in results.items():
        print(f"replay {replay}: task A exact match {e['retained.base.exact_match']:.3f} -> "
              f"{e['retained.exact_match']:.3f} (forgetting {e['forgetting.exact_match']:.3f}), task A "
              f"perplexity {e['retained.base.perplexity']:.2f} -> {e['retained.perplexity']:.2f}; task B "
              f"exact match {e['exact_match']:.3f}")
    without, with_replay = results[0.0], results[0.3]
    assert without["retained.base.exact_match"] == with_replay["retained.base.exact_match"] > 0.5  # A was learnt
    assert without["forgetting.exact_match"] > 0.3  # without replay task A is mostly forgotten
    assert with_replay["forgetting.exact_match"] < without["forgetting.exact_match"] - 0.2
    assert with_replay["forgetting.perplexity"] < without["forgetting.perplexity"]
    assert with_replay["exact_match"] > 0  # and task B is still learnt
