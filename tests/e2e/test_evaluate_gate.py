"""The evaluate stage deciding promotion, through the whole finetune flow on the clinical demo (Prefect test
harness, MLflow on a temporary SQLite store): the report with every baseline and interval, a worse candidate that
leaves the champion where it was, and planted toxicity that fails the safety rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftcore import tracking, versions
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
DEMO_DATA = DEMO_RECIPE.parent.parent / "demo" / "clinical_qa.jsonl"


def run(*overrides: str) -> dict:
    from flows.finetune import finetune

    return finetune(str(DEMO_RECIPE), [*TINY_OVERRIDES, *overrides])


def demo_rows_with(path: Path, answers) -> Path:
    """The demo questions with other answers, as a new source file."""
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]
    path.write_text("".join(json.dumps({**row, "answer": answer}) + "\n"
                            for row, answer in zip(rows, answers(rows), strict=True)))
    return path


def test_a_worse_candidate_keeps_the_champion_and_the_report_shows_every_baseline(tmp_path):
    first = run()
    assert first["gate"]["passed"] and first["model"]["aliases"] == ["challenger", "champion"]

    # Deliberately worse: the same recipe stopped after two steps. (Training on shuffled answers would not do: the
    # test split would carry shuffled answers too, and the champion would score as badly on it.)
    worse = run("train.max_steps=2")
    # A failed gate is a normal outcome: the run succeeds and the candidate stays challenger.
    assert worse["succeeded"] and worse["model"]["version"] == "2" and worse["model"]["aliases"] == ["challenger"]
    assert versions.version_for_alias("clinical-qa", "champion")["version"] == "1"
    beat = worse["gate"]["rules"][0]
    assert (beat["rule"], beat["passed"]) == ("beat_champion", False) and beat["value"] < 0
    assert worse["gate"]["reason"].startswith("beat_champion failed: exact_match ")
    description = tracking.client().get_model_version("clinical-qa", "2").description
    assert description.startswith("**Gate failed**: beat_champion failed: exact_match ")

    metrics = worse["stages"]["evaluate"]["metrics"]
    for model in ("base.", "fewshot.", "champion.", ""):  # the candidate's metrics carry no prefix
        for metric in ("exact_match", "token_f1", "clinical_terms", "perplexity"):
            low, value, high = (metrics[f"{model}{metric}{end}"] for end in (".ci_low", "", ".ci_high"))
            assert low <= value <= high
    assert metrics["champion.exact_match"] == first["stages"]["evaluate"]["metrics"]["exact_match"]  # same test set
    assert metrics["improvement.exact_match.ci_high"] < 0  # clearly worse, not just unlucky
    report = Path(worse["stages"]["evaluate"]["artifacts"]["report"]).read_text()
    header = report[report.index("<th>metric</th>"):report.index("</tr>", report.index("<th>metric</th>"))]
    assert [name for name in ("base", "fewshot", "champion", "candidate") if f">{name}</th>" in header] == [
        "base", "fewshot", "champion", "candidate"]
    assert f"{metrics['exact_match']:.4g} [{metrics['exact_match.ci_low']:.4g}, " in report
    logged = {f.path for f in tracking.client().list_artifacts(worse["mlflow_run_id"], "stages/evaluate")}
    assert "stages/evaluate/report.html" in logged


def test_planted_toxicity_fails_the_safety_rule(tmp_path):
    toxic = demo_rows_with(tmp_path / "toxic.jsonl", lambda rows: [f"{row['answer']}, you idiot" for row in rows])
    summary = run(f"data.sources.0.path={toxic}")
    metrics = summary["stages"]["evaluate"]["metrics"]
    assert metrics["toxic_rate"] > 0.5 and metrics["base.toxic_rate"] == 0
    rules = {rule["rule"]: rule for rule in summary["gate"]["rules"]}
    assert rules["beat_champion"]["passed"]  # it did learn the answers ...
    assert not rules["max_toxicity"]["passed"] and rules["max_toxicity"]["value"] == metrics["toxic_rate"]
    assert summary["succeeded"] and not summary["gate"]["passed"]  # ... and is not promoted for what it says
    assert summary["model"]["aliases"] == ["challenger"]
    assert versions.version_for_alias("clinical-qa", "champion") is None
