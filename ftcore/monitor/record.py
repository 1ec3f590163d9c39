"""A monitor pass on record: its files (report.html, report.md, metrics.json, canaries.jsonl) and its run in the
`<model>-monitor` MLflow experiment."""

from __future__ import annotations

import json
from pathlib import Path

from ftcore import tracking
from ftcore.fs import atomic_write_text
from ftcore.monitor.assess import Assessment
from ftcore.monitor.report import render_html, render_markdown

SOURCE_TAG = "ftflow.monitor.source"  # pipeline (the stage) or schedule (the monitor flow)


def summary(assessment: Assessment) -> dict:
    """What metrics.json holds: the metrics, the breaches and the objectives not measured with their reasons."""
    return {"model": assessment.model, "version": assessment.version, "window": assessment.window,
            "metrics": assessment.metrics, "breaches": assessment.breaches,
            "not_measured": {c.metric: c.reason for c in assessment.checks if c.value is None}}


def write_files(assessment: Assessment, out: Path) -> dict[str, Path]:
    """report.html, report.md, metrics.json and (with canaries) canaries.jsonl in the folder `out`."""
    files = {"report": out / "report.html", "report_markdown": out / "report.md", "metrics": out / "metrics.json"}
    atomic_write_text(files["report"], render_html(assessment))
    atomic_write_text(files["report_markdown"], render_markdown(assessment))
    atomic_write_text(files["metrics"], json.dumps(summary(assessment), indent=1) + "\n")
    if assessment.canaries:
        files["canaries"] = out / "canaries.jsonl"
        rows = [{"question": c.question, "expected": c.expected, "output": c.output, "error": c.error,
                 "correct": c.correct} | ({"image": c.image} if c.image else {}) for c in assessment.canaries]
        atomic_write_text(files["canaries"], "".join(json.dumps(r) + "\n" for r in rows))
    return files


def log_assessment(assessment: Assessment, files: dict[str, Path], tags: dict[str, str]) -> str:
    """A run in the `<model>-monitor` experiment with the metrics, the files and the outcome as tags; its id."""
    outcome = {"model": assessment.model, "version": assessment.version, "window": assessment.window,
               "breaches": ",".join(assessment.breaches), "not_measured": ",".join(assessment.not_measured)}
    return tracking.log_monitor_run(f"{assessment.model}-monitor", f"{assessment.model}-v{assessment.version}",
                                    assessment.metrics, list(files.values()), {**outcome, **tags})
