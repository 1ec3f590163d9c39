"""The command line: validation exit codes and messages, and a short run with --json."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import DEMO_RECIPE

runner = CliRunner()


def _broken_recipe(tmp_path: Path) -> Path:
    raw = yaml.safe_load(DEMO_RECIPE.read_text())
    raw["data"]["sources"][0]["path"] = str(DEMO_RECIPE.parent / raw["data"]["sources"][0]["path"])
    raw["train"]["learning_rat"] = 0.1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_accepts_the_demo_recipe():
    result = runner.invoke(app, ["validate", str(DEMO_RECIPE)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_validate_names_the_bad_field_and_exits_2(tmp_path):
    path = _broken_recipe(tmp_path)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}: train.learning_rat: unknown field" in result.output


def test_installed_console_script_exits_2_on_a_missing_recipe(tmp_path):
    ftflow = Path(sys.executable).parent / "ftflow"
    result = subprocess.run([str(ftflow), "validate", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "recipe file not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_run_rejects_a_bad_override_before_starting_anything():
    result = runner.invoke(app, ["run", str(DEMO_RECIPE), "--set", "train.epochs=-1"])
    assert result.exit_code == 2
    assert "train.epochs: Input should be greater than 0" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a CUDA GPU")
def test_fp16_without_a_gpu_is_refused_before_anything_runs_and_only_warned_by_validate(ftflow_home):
    result = runner.invoke(app, ["run", str(DEMO_RECIPE), "--set", "train.mixed_precision=fp16"])
    assert result.exit_code == 2
    assert "train.mixed_precision: fp16 needs a CUDA GPU" in result.output
    assert not (ftflow_home / "runs").exists()  # refused before the flow started
    validated = runner.invoke(app, ["validate", str(DEMO_RECIPE), "--set", "train.mixed_precision=fp16"])
    assert validated.exit_code == 0 and "warning:" in validated.output and "fp16 needs a CUDA GPU" in validated.output


@pytest.mark.usefixtures("prefect_harness")
def test_run_until_prints_the_summary_as_json():
    result = runner.invoke(app, ["run", str(DEMO_RECIPE), "--until", "clean_balance", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["stages"]["clean_balance"]["status"] == "completed"
    assert summary["stages"]["train"]["status"] == "skipped"


def test_validate_names_a_missing_data_file_and_exits_2(tmp_path):
    raw = yaml.safe_load(DEMO_RECIPE.read_text())
    raw["data"]["sources"][0]["path"] = "missing.jsonl"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"data.sources.0.path: file not found: {tmp_path / 'missing.jsonl'}" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_stage_exits_1_naming_the_stage_and_the_reason(monkeypatch):
    import tasks.collect

    def unreadable(*args, **kwargs):
        raise PermissionError("cannot read the source")

    monkeypatch.setattr(tasks.collect, "collect_stage", unreadable)
    result = runner.invoke(app, ["run", str(DEMO_RECIPE), "--set", "stages.retries=0"])
    assert result.exit_code == 1
    assert "error: stage collect failed: PermissionError: cannot read the source" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_bad_data_fails_its_stage_once_and_exits_2_naming_the_file(tmp_path, monkeypatch):
    import tasks.collect

    attempts = []
    real = tasks.collect.collect_stage
    monkeypatch.setattr(tasks.collect, "collect_stage", lambda *a, **k: attempts.append(1) or real(*a, **k))
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "What is BP?", "reply": "blood pressure"}\n')
    result = runner.invoke(app, ["run", str(DEMO_RECIPE), "--set", f"data.sources.0.path={data}",
                                 "--set", "stages.retries=2"])
    assert result.exit_code == 2
    assert f"stage collect failed: DataError: {data}: missing completion (from column 'answer')" in result.output
    assert len(attempts) == 1  # a user error is not retried


def _register(tmp_path: Path, name: str, metrics: dict[str, float], tagged: bool = False) -> str:
    """A version whose run logged `metrics` as the evaluate stage's; `tagged`: registered as before ftflow kept
    version tags to lineage, with the metrics as `metric.<name>` tags and none in its run."""
    from ftcore import tracking, versions

    folder = tmp_path / f"{name}-{len(metrics)}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    run_id = tracking.start_pipeline_run("compare", "run", {}, {})
    if not tagged:
        tracking.log_stage(run_id, "evaluate", metrics, {}, cached=False)
    tags = {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()} if tagged else {}
    return versions.register_version(run_id, name, folder, tags)


def test_compare_prints_the_metric_differences_between_two_versions(tmp_path):
    from ftcore import versions

    _register(tmp_path, "qa", {"exact_match": 0.5, "perplexity": 3.0}, tagged=True)
    _register(tmp_path, "qa", {"exact_match": 0.75, "perplexity": 4.0, "forgetting.exact_match": 0.1,
                               "base.exact_match": 0.2, "exact_match.ci_low": 0.6})
    versions.set_alias("qa", "champion", "2")
    result = runner.invoke(app, ["compare", "qa/1", "qa@champion", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in json.loads(result.output)}
    assert rows["exact_match"] == {"metric": "exact_match", "qa/1": 0.5, "qa/2": 0.75, "change": 0.25}
    assert rows["perplexity"]["change"] == 1.0 and rows["forgetting.exact_match"]["qa/1"] is None
    assert rows.keys() == {"exact_match", "perplexity", "forgetting.exact_match"}  # no baselines, no bounds
    table = runner.invoke(app, ["compare", "models:/qa/1", "qa/2"])
    assert table.exit_code == 0 and "qa/2 against qa/1" in table.output and "+0.25" in table.output


@pytest.mark.parametrize(("ref", "message"), [("qa", "name a registered version as NAME/VERSION or NAME@ALIAS"),
                                              ("qa/7", "registered model 'qa' has no version 7")])
def test_compare_names_a_bad_version_in_one_line_and_exits_2(tmp_path, ref, message):
    _register(tmp_path, "qa", {"exact_match": 0.5})
    result = runner.invoke(app, ["compare", "qa/1", ref])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) <= 2


def test_better_marks_the_version_each_metric_favours():
    from ftcore.deploy.compare import MetricDiff

    assert MetricDiff("exact_match", 0.5, 0.7).better == "b"
    assert MetricDiff("perplexity", 3.0, 4.0).better == "a"
    assert MetricDiff("forgetting.exact_match", 0.3, 0.1).better == "b"
    assert MetricDiff("exact_match.ci_low", 0.1, 0.2).better == ""
    assert MetricDiff("exact_match", 0.5, None).better == ""


@pytest.mark.usefixtures("prefect_harness")
def test_a_cleaning_run_shows_which_steps_quarantined_rows_and_ftflow_quarantine_prints_them(ftflow_home):
    """The data engineer's first questions after a cleaning run: which step set rows aside, how many, and which."""
    result = runner.invoke(app, ["run", str(DEMO_RECIPE), "--until", "clean_balance"], terminal_width=240)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    # The demo's data: 12 empty answers and 48 duplicates (generate_clinical_qa.py writes both on purpose).
    assert "drop_empty quarantined 12" in shown and "drop_duplicates quarantined 48" in shown
    assert "strip_markup quarantined" not in shown  # a step that set nothing aside is not listed

    [run_id] = [run.name for run in (ftflow_home / "runs").iterdir()]
    listed = runner.invoke(app, ["quarantine", run_id, "--step", "drop_empty", "--limit", "2"], terminal_width=240)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("drop_empty: empty completion  clinical_qa.jsonl:") and
                                   'completion=""' in line for line in lines[:2])
    assert lines[2] == "2 of 12 quarantined rows shown (step drop_empty); by step: drop_duplicates 48, drop_empty 12"
    wrong = runner.invoke(app, ["quarantine", run_id, "--step", "drop_short"])
    assert wrong.exit_code == 2 and "steps that did: drop_duplicates (48), drop_empty (12)" in wrong.output
