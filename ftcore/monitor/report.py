"""The monitor report: one self-contained HTML page (inline CSS, charts as base64 PNG, no scripts or external URLs,
like the evaluation report) and a markdown summary for the Prefect artifact."""

from __future__ import annotations

import base64
from html import escape

import numpy as np

from ftcore.evaluation.report import STYLE
from ftcore.monitor import plots
from ftcore.monitor.assess import Assessment
from ftcore.monitor.objectives import BREACHED, MET, Check

MAX_TEXT = 300  # characters of a canary answer or a flagged output shown
STATUS_STYLE = """
.met { background: #e3f4e1; } .breached { background: #fbdcdc; font-weight: bold; }
.not-measured { background: #eee; color: #555; }
"""
DRIFT_VIEWS = {"length": "input lengths (KS statistic)", "vocabulary": "word distribution (Jensen-Shannon)",
               "embedding": "MiniLM embeddings (2·AUC − 1 of a two-sample classifier)"}
IMAGE_VIEWS = {"image_width": "image widths (KS statistic)", "image_height": "image heights (KS statistic)",
               "image_brightness": "image mean brightness (KS statistic)"}


def verdict(assessment: Assessment) -> str:
    if assessment.breaches:
        return "BREACHED: " + ", ".join(assessment.breaches)
    measured = "all measured objectives met"
    return f"{measured}; not measured: {', '.join(assessment.not_measured)}" if assessment.not_measured else measured


def render_html(a: Assessment) -> str:
    page = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{escape(a.title)}</title>\n<style>{STYLE}{STATUS_STYLE}</style>\n</head>\n<body>",
        f"<h1>{escape(a.title)}</h1>",
        f'<p class="note">{escape(a.window)}; {_traffic_line(a)}</p>',
        *(f'<p class="note">{escape(note)}</p>' for note in a.notes),
        f"<p><strong>{escape(verdict(a))}</strong></p>",
        "<h2>Objectives</h2>",
        _objectives_table(a.checks),
        *_charts(a),
        _drift_section(a),
        _canaries_table(a),
        _toxic_section(a.toxic_examples),
        _metrics_table(a.metrics),
        "</body>\n</html>\n",
    ]
    return "\n".join(part for part in page if part)


def render_markdown(a: Assessment) -> str:
    lines = [f"# {a.title}", "", f"{a.window}; {_traffic_line(a)}", "", f"**{verdict(a)}**", "",
             "| objective | measured | objective | status |", "|---|---|---|---|"]
    for c in a.checks:
        measured = _num(c.value) if c.value is not None else f"– ({c.reason})"
        lines.append(f"| {c.label} (`{c.metric}`) | {measured} | {c.objective} | {c.status} |")
    drift = ", ".join(f"{part} {_num(value)}" for part, value in a.drift.parts.items())
    if drift:
        lines += ["", f"Drift views: {drift}."]
    return "\n".join(lines) + "\n"


def _traffic_line(a: Assessment) -> str:
    rows = a.rows
    versions = ", ".join(f"v{v}: {n}" for v, n in rows["version"].value_counts().sort_index().items())
    line = f"{len(rows)} requests"
    return f"{line} ({versions})" if versions else line


def _objectives_table(checks: list[Check]) -> str:
    rows = []
    for c in checks:
        css = {MET: "met", BREACHED: "breached"}.get(c.status, "not-measured")
        measured = _num(c.value) if c.value is not None else "–"
        rows.append(f"<tr><td>{escape(c.label)}</td><td>{escape(c.metric)}</td><td>{measured}</td>"
                    f"<td>{escape(c.objective)}</td><td class=\"{css}\">{escape(c.status)}</td>"
                    f"<td class=\"text\">{escape(c.reason or '')}</td></tr>")
    header = "<tr><th>objective</th><th>metric</th><th>measured</th><th>objective</th><th>status</th><th>note</th></tr>"
    return "<table>\n" + header + "\n" + "\n".join(rows) + "\n</table>"


def _charts(a: Assessment) -> list[str]:
    figures = []
    limit = next(c.limit for c in a.checks if c.metric == "latency_p95_s")
    if not a.rows.empty:
        figures.append(_figure("Latency", plots.latency_histogram(a.rows["latency_s"].to_numpy(dtype=float), limit)))
        figures.append(_figure("Latency and errors over the window", plots.traffic_over_time(a.rows, limit)))
    if a.live_inputs and a.reference_inputs:
        figures.append(_figure("Input lengths: live against training",
                               plots.length_distributions(a.live_inputs, a.reference_inputs)))
    return figures


def _drift_section(a: Assessment) -> str:
    with_images = bool(a.live_images or a.reference_images)
    views = DRIFT_VIEWS | (IMAGE_VIEWS if with_images else {})
    rows = [f"<tr><td>{escape(views.get(part, part))}</td><td>{_num(value)}</td></tr>"
            for part, value in a.drift.parts.items()]
    skipped = [f"<tr><td>{escape(label)}</td><td>not computed</td></tr>"
               for part, label in views.items() if part not in a.drift.parts]
    note = f'<p class="note">{escape(a.drift.note)}</p>' if a.drift.note else ""
    images = (f", {len(a.live_images)} logged images against {len(a.reference_images)} training images"
              if with_images else "")
    counts = (f'<p class="note">{len(a.live_inputs)} logged inputs against {len(a.reference_inputs)} training '
              f"inputs{images}; the score is the largest view</p>")
    return ("<h2>Input drift</h2>\n" + counts + note + "\n<table>\n<tr><th>view</th><th>value</th></tr>\n"
            + "\n".join(rows + skipped) + "\n</table>")


def _canaries_table(a: Assessment) -> str:
    if not a.canaries:
        return ""
    rows = []
    for c in a.canaries:
        answer = c.output if c.error is None else f"ERROR {c.error}"
        css = "met" if c.correct else "breached"
        question = c.question if c.image is None else f"[{c.image}] {c.question}"
        rows.append(f'<tr><td class="text">{escape(_cut(question))}</td><td class="text">{escape(c.expected)}</td>'
                    f'<td class="text">{escape(_cut(answer))}</td><td class="{css}">{"yes" if c.correct else "no"}'
                    "</td></tr>")
    header = "<tr><th>question</th><th>expected</th><th>answer</th><th>right</th></tr>"
    return "<h2>Canaries</h2>\n<table>\n" + header + "\n" + "\n".join(rows) + "\n</table>"


def _toxic_section(examples: list[str]) -> str:
    if not examples:
        return ""
    items = "\n".join(f'<li class="text">{escape(_cut(text))}</li>' for text in examples)
    return f"<h2>Outputs flagged toxic (first {len(examples)})</h2>\n<ul>\n{items}\n</ul>"


def _metrics_table(metrics: dict[str, float]) -> str:
    rows = [f"<tr><td>{escape(k)}</td><td>{_num(v)}</td></tr>" for k, v in sorted(metrics.items())]
    return "<h2>All metrics</h2>\n<table>\n<tr><th>metric</th><th>value</th></tr>\n" + "\n".join(rows) + "\n</table>"


def _figure(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><figcaption>{escape(caption)}</figcaption>"
            f'<img src="data:image/png;base64,{data}" alt="{escape(caption)}"></figure>')


def _cut(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _num(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e6 else f"{value:.4g}"
