"""The evaluation report: one self-contained HTML file, and `ftflow report RUN_ID` fetching it from MLflow."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from ftcore.evaluation.report import ReportData, example_sets, write_report
from ftcore.training.plots import pyplot

runner = CliRunner()

METRICS = {
    "exact_match": 0.5, "exact_match.ci_low": 0.35, "exact_match.ci_high": 0.65,
    "base.exact_match": 0.2, "base.exact_match.ci_low": 0.1, "base.exact_match.ci_high": 0.3,
    "fewshot.exact_match": 0.3, "champion.exact_match": 0.45,
    "perplexity": 4.25, "base.perplexity": 9.5, "champion.perplexity": 3.75,
    "improvement.exact_match": 0.3, "improvement.exact_match.ci_low": 0.12, "improvement.exact_match.ci_high": 0.48,
    "forgetting.perplexity": 0.125, "test_rows": 40,
}


def _png(path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def _report(tmp_path: Path) -> ReportData:
    examples = pd.DataFrame({
        "input": ["<script>alert(1)</script>", "x" * 1000],
        "reference": ["a & b", "ref"],
        "output": ["wrong", "also wrong"],
        "score": [0.0, float("nan")],
        "output.base": ["base said <b>", "base"],
    })
    return ReportData(
        title="clinical-qa: evaluation", objective="sft", models=["base", "fewshot", "champion", "candidate"],
        table_metrics=["exact_match", "token_f1", "perplexity"], metrics=METRICS,
        examples={"Worst examples": examples},
        example_metric="token_f1", notes=["reference model: base", "test rows: 40"],
        images={"Training loss": _png(tmp_path / "loss.png"), "Confusion matrix": tmp_path / "missing.png"},
    )


@pytest.fixture
def page(tmp_path: Path) -> str:
    path = write_report(_report(tmp_path), tmp_path / "out" / "report.html")
    return path.read_text(encoding="utf-8")


def _row(page: str, metric: str) -> str:
    return re.search(rf"<tr><td>{re.escape(metric)}</td>.*?</tr>", page).group(0)


def test_the_report_is_one_self_contained_html_document(page):
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1 and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)=["']?https?://""", page)
    assert "<script" not in page  # no JavaScript, and the example's script tag is only text


def test_the_main_table_shows_values_with_intervals_and_the_best_in_bold(page):
    exact_match = _row(page, "exact_match")
    assert '<td class="candidate"><strong>0.5 [0.35, 0.65]</strong></td>' in exact_match
    assert "<td>0.2 [0.1, 0.3]</td>" in exact_match and "<td>0.45</td>" in exact_match  # no interval: no brackets
    perplexity = _row(page, "perplexity")  # lower is better
    assert "<strong>3.75</strong>" in perplexity and "<strong>" not in perplexity.replace("<strong>3.75", "")
    assert _row(page, "token_f1").count("–") == 4  # no model has it
    assert '<th class="candidate">candidate</th>' in page


def test_other_metrics_are_listed_once_with_their_intervals(page):
    all_metrics = page[page.index("<h2>All metrics</h2>"):]
    keys = re.findall(r"<tr><td>([^<]+)</td>", all_metrics)
    assert keys == ["forgetting.perplexity", "improvement.exact_match", "test_rows"]
    assert "<td>0.3 [0.12, 0.48]</td>" in all_metrics and "<td>40</td>" in all_metrics


def test_images_are_embedded_and_missing_ones_skipped(page):
    assert page.count('src="data:image/png;base64,') == 2  # the comparison chart and the loss curve
    assert "Training loss" in page and "Confusion matrix" not in page


def test_example_texts_are_escaped_and_truncated(page):
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a &amp; b" in page and "base said &lt;b&gt;" in page
    assert "x" * 399 + "…" in page and "x" * 400 not in page
    assert "<th>token_f1</th>" in page and "<th>base output</th>" in page


def test_the_candidate_may_be_named_like_the_other_models(tmp_path):
    metrics = {"candidate.exact_match": 0.5, "candidate.exact_match.ci_low": 0.4, "candidate.exact_match.ci_high": 0.6,
               "base.exact_match": 0.25}
    report = ReportData(title="qa", objective="sft", models=["base", "candidate"], table_metrics=["exact_match"],
                        metrics=metrics)
    page = write_report(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<td class="candidate"><strong>0.5 [0.4, 0.6]</strong></td>' in _row(page, "exact_match")
    assert "All metrics" not in page and "Worst examples" not in page


def test_worst_examples_come_worst_first_with_unscored_last():
    predictions = pd.DataFrame({"question": ["q1", "q2", "q3", "q4"], "answer": ["a1", "a2", "a3", "a4"],
                                "candidate": ["c1", "c2", "c3", "c4"], "base": ["b1", "b2", "b3", "b4"],
                                "candidate.token_f1": [0.5, float("nan"), 0.1, 0.9]})
    sets = example_sets(predictions, "candidate.token_f1", "question", "answer", "candidate",
                        other_outputs={"base": "base"})
    worst, best = sets["Worst examples"], sets["Best examples"]
    assert list(worst.columns) == ["input", "reference", "output", "score", "output.base"]
    assert worst["input"].tolist() == ["q3", "q1", "q4", "q2"] and math.isnan(worst["score"].iloc[-1])
    assert worst["output.base"].tolist() == ["b3", "b1", "b4", "b2"]
    assert best["input"].tolist() == ["q4", "q1", "q3"]  # unscored rows are neither best nor worst of the scored
    assert sorted(sets["Random examples"]["input"]) == ["q1", "q2", "q3", "q4"]


def test_for_a_lower_is_better_metric_the_worst_are_the_highest_and_images_are_shown(tmp_path):
    from PIL import Image

    Image.new("RGB", (600, 40), "white").save(tmp_path / "line.png")
    predictions = pd.DataFrame({"raw_prompt": ["q1", "q2"], "raw_completion": ["abc", "abd"],
                                "candidate": ["abc", "xyz"], "candidate.cer": [0.0, 0.67],
                                "images": [[str(tmp_path / "line.png")], []]})
    sets = example_sets(predictions, "candidate.cer", "raw_prompt", "raw_completion", "candidate",
                        lower_is_better=True, image_column="images")
    assert sets["Worst examples"]["input"].tolist() == ["q2", "q1"]
    assert sets["Best examples"]["input"].tolist() == ["q1", "q2"]
    report = ReportData(title="ocr", objective="vision_language", models=["candidate"], table_metrics=["cer"],
                        metrics={"cer": 0.33}, examples=sets, example_metric="cer")
    page = write_report(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count('alt="test image"') == 3  # the line in each set; the row without one gets a dash
    assert 'width="360" height="24"' in page  # scaled into 360 x 120, its shape kept
    assert "<h2>Best examples</h2>" in page and "<h2>Random examples</h2>" in page


# ---------------------------------------------------------------------------------------------------------------
# ftflow report RUN_ID


def _logged_run(tmp_path: Path, with_report: bool) -> str:
    from ftcore import tracking

    run_id = tracking.start_pipeline_run("report", "run", {}, {})
    report = tmp_path / "report.html"
    report.write_text("<!DOCTYPE html><html><body>report\r\n</body></html>\n")
    tracking.log_stage(run_id, "evaluate", {}, {"report": report} if with_report else {}, cached=False)
    return run_id


def test_report_fetches_the_html_of_an_ftflow_run_or_an_mlflow_run(tmp_path, monkeypatch):
    from flows.summary import RunSummary

    mlflow_run_id = _logged_run(tmp_path, with_report=True)
    RunSummary("flow-run-1234", mlflow_run_id, "hash", "recipe.yaml").write()
    output = tmp_path / "fetched" / "r.html"
    result = runner.invoke(app, ["report", "flow-run-1234", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert str(output) in result.output
    assert output.read_bytes() == (tmp_path / "report.html").read_bytes()

    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", mlflow_run_id, "--open"])
    assert result.exit_code == 0, result.output
    default = tmp_path / f"report-{mlflow_run_id[:8]}.html"
    assert default.read_bytes() == output.read_bytes() and opened == [default.as_uri()]


def test_report_names_an_unknown_run_or_a_missing_report_in_one_line_and_exits_2(tmp_path):
    unknown = runner.invoke(app, ["report", "nope"])
    assert unknown.exit_code == 2 and "run nope: no such run" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1
    without = _logged_run(tmp_path, with_report=False)
    missing = runner.invoke(app, ["report", without])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1
    assert f"run {without}: no evaluation report (stages/evaluate/report.html); was the evaluate stage run?" in (
        missing.output)
