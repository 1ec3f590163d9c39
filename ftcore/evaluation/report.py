"""The evaluation report: one HTML page per run with the metric table (values with their bootstrap intervals, the best
model per metric in bold), a comparison chart, the stage's images (loss curves, confusion matrix), the worst examples
and every other metric.

The page is a single self-contained file (inline CSS, images as base64 data URIs, no JavaScript, no external URLs),
because it is opened from MLflow's artifact viewer or a laptop, where nothing beside it can be fetched. Examples about
images show each example's first image as a thumbnail beside its reference and outputs.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

from ftcore.fs import atomic_write_text
from ftcore.training.plots import pyplot

CANDIDATE = "candidate"
INTERVAL_SUFFIXES = (".ci_low", ".ci_high")
MAX_TEXT = 400  # characters of an example's text shown; the full rows are in predictions.jsonl
MISSING = "–"
THUMBNAIL = (360, 120)  # the largest width and height of an example's image (a text line keeps its shape)
EXAMPLES = {"Worst examples": 10, "Best examples": 5, "Random examples": 5}  # title -> rows shown
EXAMPLE_SEED = 0

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child, .text { text-align: left; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 28em; }
img { max-width: 100%; }
td img { max-width: none; }
.candidate { background: #fff4d6; }
.note { color: #555; margin: 0.2em 0; }
figure { margin: 1em 0; }
figcaption { font-weight: bold; margin-bottom: 0.3em; }
"""


@dataclass
class ReportData:
    """What one run's report shows. In `metrics` the candidate's value of metric x is `x`, another model m's is
    `m.x`, each with optional interval bounds `<key>.ci_low` and `<key>.ci_high`; `examples` is `worst_examples`'
    frames by title (`example_sets`); `images` maps captions to PNG files (missing ones are left out)."""

    title: str
    objective: str
    models: list[str]
    table_metrics: list[str]
    metrics: dict[str, float]
    lower_is_better: frozenset[str] = frozenset({"perplexity"})
    examples: dict[str, pd.DataFrame] = field(default_factory=dict)
    example_metric: str | None = None
    images: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_report(report: ReportData, path: Path) -> Path:
    """Render `report` as one self-contained HTML file at `path` (written atomically); returns `path`."""
    chart = _comparison_chart(report)
    figures = {"Comparison": chart} if chart else {}
    figures |= {caption: Path(image).read_bytes() for caption, image in report.images.items() if Path(image).is_file()}
    page = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{escape(report.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        f"<h1>{escape(report.title)}</h1>",
        f'<p class="note">objective: {escape(report.objective)}</p>',
        *(f'<p class="note">{escape(note)}</p>' for note in report.notes),
        "<h2>Metrics</h2>",
        _main_table(report),
        *(_figure(caption, png) for caption, png in figures.items()),
        *(_examples_table(title, frame, report.example_metric) for title, frame in report.examples.items()),
        _all_metrics_table(report),
        "</body>\n</html>\n",
    ]
    atomic_write_text(path, "\n".join(page))
    return Path(path)


def example_sets(predictions: pd.DataFrame, score_column: str, input_column: str, reference_column: str,
                 output_column: str, lower_is_better: bool = False, other_outputs: dict[str, str] | None = None,
                 image_column: str | None = None) -> dict[str, pd.DataFrame]:
    """The worst-scoring rows (unscored ones last), the best and a random few (seeded), by title (`EXAMPLES`), each
    in the shape the report shows: input, reference, output, score, `output.<model>` for each model -> column in
    `other_outputs`, and with `image_column` (lists of image files) the first image's `image`."""
    columns = {"input": input_column, "reference": reference_column, "output": output_column, "score": score_column}
    columns |= {f"output.{model}": column for model, column in (other_outputs or {}).items()}
    worst_first = predictions.sort_values(score_column, ascending=not lower_is_better, na_position="last",
                                          kind="stable")
    best_first = predictions.dropna(subset=[score_column]).sort_values(score_column, ascending=lower_is_better,
                                                                       kind="stable")
    picked = {"Worst examples": worst_first, "Best examples": best_first,
              "Random examples": predictions.sample(frac=1.0, random_state=EXAMPLE_SEED)}
    sets = {}
    for title, ordered in picked.items():
        rows = ordered.head(EXAMPLES[title])
        frame = pd.DataFrame({name: rows[column].to_numpy() for name, column in columns.items()})
        if image_column is not None:
            frame["image"] = [paths[0] if len(paths) else None for paths in rows[image_column]]
        sets[title] = frame
    return sets


def _metric_keys(model: str, metric: str) -> list[str]:
    """The keys `model`'s value of `metric` may have. The candidate's is the bare `<metric>` (as on registered
    versions' tags), but `evaluate_models` names it `candidate.<metric>` like every other model's: both are read."""
    return [metric, f"{model}.{metric}"] if model == CANDIDATE else [f"{model}.{metric}"]


def _metric_key(metrics: dict[str, float], model: str, metric: str) -> str | None:
    return next((key for key in _metric_keys(model, metric) if key in metrics), None)


def _comparison_chart(report: ReportData) -> bytes | None:
    """PNG of one small bar chart per table metric (each on its own scale, so perplexity does not squash exact
    match), one bar per model with its interval as error bars; None when no table metric has a value."""
    panels = {metric: _model_values(report, metric) for metric in report.table_metrics}
    panels = {metric: values for metric, values in panels.items() if values}
    if not panels:
        return None
    plt = pyplot()
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 2.6 * rows), squeeze=False)
    for ax, (metric, values) in zip(axes.flat, panels.items(), strict=False):
        _plot_bars(ax, report.models, values)
        ax.set_title(metric, fontsize=10)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _plot_bars(ax, models: list[str], values: dict[str, tuple[float, tuple[float, float] | None]]) -> None:
    """One bar per model at the same place in every panel (a model without the metric leaves a gap), each interval
    as an error bar."""
    for position, model in enumerate(models):
        if model not in values:
            continue
        value, interval = values[model]
        ax.bar(position, value, color=f"C{position}")
        if interval:
            # max(): a bound on the wrong side of the value (possible for a resampled ratio) is no negative error.
            errors = [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]
            ax.errorbar(position, value, yerr=errors, color="black", capsize=3)
    ax.set_xticks(range(len(models)), models, rotation=30, fontsize=8)
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def _model_values(report: ReportData, metric: str) -> dict[str, tuple[float, tuple[float, float] | None]]:
    """Model -> (value, interval or None) of `metric`, for the models with a finite value."""
    values = {}
    for model in report.models:
        key = _metric_key(report.metrics, model, metric)
        if key is not None and math.isfinite(value := report.metrics[key]):
            values[model] = (value, _interval(report.metrics, key))
    return values


def _interval(metrics: dict[str, float], key: str) -> tuple[float, float] | None:
    low, high = (metrics.get(key + suffix) for suffix in INTERVAL_SUFFIXES)
    return None if low is None or high is None else (low, high)


def _value_text(metrics: dict[str, float], key: str | None) -> str:
    """`0.412 [0.35, 0.47]`: the value with its interval when it has one."""
    if key is None:
        return MISSING
    interval = _interval(metrics, key)
    bounds = f" [{_num(interval[0])}, {_num(interval[1])}]" if interval else ""
    return _num(metrics[key]) + bounds


def _best_models(report: ReportData, metric: str) -> set[str]:
    """The models with the best value of `metric` (all of them on a tie)."""
    values = {model: value for model, (value, _) in _model_values(report, metric).items()}
    if not values:
        return set()
    lower = metric.split(".")[0] in report.lower_is_better
    best = min(values.values()) if lower else max(values.values())
    return {model for model, value in values.items() if value == best}


def _main_table(report: ReportData) -> str:
    header = "<tr><th>metric</th>" + "".join(_cell(model, escape(model), "th") for model in report.models) + "</tr>"
    rows = []
    for metric in report.table_metrics:
        best = _best_models(report, metric)
        cells = []
        for model in report.models:
            text = escape(_value_text(report.metrics, _metric_key(report.metrics, model, metric)))
            cells.append(_cell(model, f"<strong>{text}</strong>" if model in best else text))
        rows.append(f"<tr><td>{escape(metric)}</td>{''.join(cells)}</tr>")
    return f"<table>\n{header}\n" + "\n".join(rows) + "\n</table>"


def _cell(model: str, content: str, tag: str = "td") -> str:
    """A table cell of `model`'s column holding the HTML `content`; the candidate's column is highlighted."""
    css = ' class="candidate"' if model == CANDIDATE else ""
    return f"<{tag}{css}>{content}</{tag}>"


def _figure(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><figcaption>{escape(caption)}</figcaption>"
            f'<img src="data:image/png;base64,{data}" alt="{escape(caption)}"></figure>')


def _examples_table(title: str, examples: pd.DataFrame, example_metric: str | None) -> str:
    if examples.empty:
        return ""
    others = [column for column in examples.columns if column.startswith("output.")]
    images = "image" in examples
    headers = [*(["image"] if images else []), "input", "reference", "candidate output", example_metric or "score",
               *(f"{column.removeprefix('output.')} output" for column in others)]
    rows = []
    for _, example in examples.iterrows():
        picture = [f"<td>{_thumbnail(example['image'])}</td>"] if images else []
        texts = [f'<td class="text">{escape(_truncate(example[column]))}</td>'
                 for column in ("input", "reference", "output")]
        score = f"<td>{_num(example['score'])}</td>"
        outputs = [f'<td class="text">{escape(_truncate(example[column]))}</td>' for column in others]
        rows.append("<tr>" + "".join([*picture, *texts, score, *outputs]) + "</tr>")
    header = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"
    return f"<h2>{escape(title)}</h2>\n<table>\n" + header + "\n" + "\n".join(rows) + "\n</table>"


def _thumbnail(path: object) -> str:
    """The image scaled down to fit THUMBNAIL, inline as PNG; a dash when there is none or it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, str) or not path:  # no image: None, or NaN once in a frame
        return MISSING
    try:
        with Image.open(path) as image:
            small = image.convert("RGB")
            small.thumbnail(THUMBNAIL)
    except (OSError, UnidentifiedImageError):
        return MISSING
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="test image" width="{small.width}" height="{small.height}">'



def _all_metrics_table(report: ReportData) -> str:
    """Every metric the main table does not show, by key, each interval beside its value."""
    shown = {key for metric in report.table_metrics for model in report.models for key in _metric_keys(model, metric)}
    keys = sorted(key for key in report.metrics if key not in shown and not key.endswith(INTERVAL_SUFFIXES))
    if not keys:
        return ""
    rows = [f"<tr><td>{escape(key)}</td><td>{escape(_value_text(report.metrics, key))}</td></tr>" for key in keys]
    return "<h2>All metrics</h2>\n<table>\n<tr><th>metric</th><th>value</th></tr>\n" + "\n".join(rows) + "\n</table>"


def _truncate(value: object) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return MISSING
    # Counts (test_rows) in full: 4 significant digits would print 12345 rows as 1.234e+04.
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e6 else f"{value:.4g}"
