"""The data card: what the clean/balance stage did to the data, in markdown (an MLflow and a Prefect artifact).

Its statistics are gathered from the written Parquet files a batch and a column at a time, so a card costs no more
memory than cleaning does.

Image rows get thumbnails of a few train rows with their question and answer, embedded in the markdown as `data:`
URLs: the Prefect artifact shows them, while relative links would resolve against the Prefect and MLflow web
pages, not the stage folder. MLflow's markdown view drops `data:` URLs, so the thumbnails are also written as JPEG
files (`write_thumbnails`), which the stage logs beside the card and MLflow shows as images.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ftcore.columns import IMAGE_PLACEHOLDER, IMAGES_COLUMN, LABEL_COLUMN
from ftcore.data.images import image_names, open_image
from ftcore.parquet_io import iter_frames, num_rows
from ftcore.registry import MESSAGES_COLUMN, Batch

BAR_WIDTH = 30
MARKERS = {"augmented": "made by augmentation", "synthetic": "synthesised by SMOTE (feature space only)"}
THUMBNAILS = 8  # train rows shown with their first image
THUMBNAIL_BOX = (384, 96)  # width x height a thumbnail fits in: a square picture 96 px, a text line 384 px wide


@dataclass(frozen=True)
class Thumbnail:
    row: int  # the row's number in the train split
    question: str
    answer: str
    jpeg: bytes

    @property
    def file_name(self) -> str:
        return f"data_card-train-row-{self.row}.jpg"


@dataclass
class ImageStats:
    sizes: np.ndarray  # train split: (width, height) of every image that opens
    unreadable: int  # train split: images that do not open (a recipe without drop_undecodable_images)
    thumbnails: list[Thumbnail]
    files: int  # in the dataset's image store
    pruned: int  # store files no row named any more, removed by the stage


@dataclass
class CardStats:
    rows: dict[str, int]
    labels: dict[str, pd.Series]  # per split: label -> rows (empty without a label column)
    lengths: dict[str, np.ndarray]  # train split: text column -> characters per row
    examples: pd.DataFrame  # the first rows of the train split
    reasons: dict[tuple[str, str], list] = field(default_factory=dict)  # (step, pattern) -> [rows, example]
    marked: dict[str, int] = field(default_factory=dict)  # marker column -> train rows flagged
    images: ImageStats | None = None


def collect_card_stats(splits: dict[str, Path], quarantine: Path, text_columns: list[str],
                       batch_rows: int, images: Path | None = None, images_pruned: int = 0) -> CardStats:
    """`images`: the dataset's image store, for image rows; `images_pruned`: how many files the stage removed
    from it."""
    train = splits["train"]
    columns = pq.read_schema(train).names
    stats = CardStats(rows={name: num_rows(path) for name, path in splits.items()}, labels={}, lengths={},
                      examples=next(iter_frames(train, 3), pd.DataFrame()))
    if LABEL_COLUMN in columns:
        stats.labels = {name: _value_counts(path, LABEL_COLUMN, batch_rows) for name, path in splits.items()}
    synthetic = ["synthetic"] if "synthetic" in columns else []  # SMOTE rows have no text: not in the lengths
    for column in text_columns:
        shown = f"raw_{column}" if f"raw_{column}" in columns else column  # the cleaned text, not the template
        frames = (f[~f["synthetic"]] if synthetic else f for f in iter_frames(train, batch_rows, [shown, *synthetic]))
        stats.lengths[shown] = np.concatenate([Batch(f, [shown]).text(shown).str.len().to_numpy() for f in frames]
                                              or [np.zeros(0)])
    for marker in MARKERS:
        if marker in columns:
            stats.marked[marker] = int(sum(f[marker].sum() for f in iter_frames(train, batch_rows, [marker])))
    for frame in iter_frames(quarantine, batch_rows, columns=["step", "reason"]):
        patterns = frame["reason"].str.replace(r"\d+", "#", regex=True)
        for (step, pattern), group in frame.groupby([frame["step"], patterns], sort=False):
            entry = stats.reasons.setdefault((step, pattern), [0, group["reason"].iloc[0]])
            entry[0] += len(group)
    if images is not None:
        sizes = [_image_size(images / name) for frame in iter_frames(train, batch_rows, [IMAGES_COLUMN])
                 for cell in frame[IMAGES_COLUMN] for name in image_names(cell)]
        opened = [size for size in sizes if size is not None]
        stats.images = ImageStats(np.array(opened, dtype=np.int64).reshape(-1, 2), len(sizes) - len(opened),
                                  _thumbnails(train, images), sum(1 for _ in images.iterdir()), images_pruned)
    return stats


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header (nothing decoded); None for a file that does not open."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # the card describes the data; drop_undecodable_images is what quarantines it
        return None


def _thumbnails(split: Path, store: Path) -> list[Thumbnail]:
    """The first train rows with an image: their first image shrunk into THUMBNAIL_BOX, and their chat's first
    question and answer."""
    rows = next(iter_frames(split, 4 * THUMBNAILS, [IMAGES_COLUMN, MESSAGES_COLUMN]), pd.DataFrame())
    thumbnails = []
    for row, (cell, messages) in enumerate(zip(rows.get(IMAGES_COLUMN, []), rows.get(MESSAGES_COLUMN, []),
                                               strict=True)):
        names = image_names(cell)
        jpeg = _thumbnail_jpeg(store / names[0]) if names and len(thumbnails) < THUMBNAILS else None
        if jpeg:
            thumbnails.append(Thumbnail(row, *_question_and_answer(messages), jpeg))
    return thumbnails


def _question_and_answer(messages: str) -> tuple[str, str]:
    chat = json.loads(messages)
    user = next((i for i, m in enumerate(chat) if m["role"] == "user"), None)
    if user is None:
        return "", ""
    answer = next((m["content"] for m in chat[user + 1:] if m["role"] == "assistant"), "")
    return chat[user]["content"].replace(IMAGE_PLACEHOLDER, "").strip(), answer.strip()


def _thumbnail_jpeg(path: Path) -> bytes | None:
    """None for an image that does not decode (as in _image_size)."""
    from PIL import Image

    try:
        image = open_image(path)  # as the model sees it: RGB, transparency on white
    except Exception:
        return None
    image.thumbnail(THUMBNAIL_BOX, Image.Resampling.LANCZOS)
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def write_thumbnails(stats: CardStats, folder: Path) -> list[str]:
    """The card's thumbnails as JPEG files in `folder`; their file names."""
    thumbnails = stats.images.thumbnails if stats.images else []
    if thumbnails:
        folder.mkdir()
    for thumbnail in thumbnails:
        (folder / thumbnail.file_name).write_bytes(thumbnail.jpeg)
    return [thumbnail.file_name for thumbnail in thumbnails]


def _value_counts(path: Path, column: str, batch_rows: int) -> pd.Series:
    counts = [frame[column].astype(str).value_counts() for frame in iter_frames(path, batch_rows, [column])]
    return pd.concat(counts).groupby(level=0).sum() if counts else pd.Series(dtype=int)


def render_data_card(name: str, metrics: dict[str, float], collect_metrics: dict[str, float], stats: CardStats,
                     balance_column: str | None) -> str:
    lines = [f"# Data card: {name}", ""]
    lines += _collect_line(collect_metrics)
    lines += _step_table(metrics)
    lines += _split_table(stats)
    if stats.labels:
        lines += _label_table(stats)
    if balance_column and any(k.startswith(f"{balance_column}.") for k in metrics):
        lines += _balance_table(metrics, balance_column)
    lines += _marked_rows(stats)
    for column, lengths in stats.lengths.items():
        lines += _histogram(f"Length of `{column}` in the train split (characters)", "characters", lengths)
    if stats.images:
        lines += _image_sizes_section(stats.images)
    lines += _quarantine_reasons(stats)
    lines += _image_examples(stats.images.thumbnails) if stats.images else _examples(stats.examples)
    return "\n".join(lines) + "\n"


def _collect_line(collect_metrics: dict[str, float]) -> list[str]:
    if not collect_metrics.get("rows_quarantined"):
        return []
    return [f"Collect read {collect_metrics['rows_in']:.0f} rows and quarantined "
            f"{collect_metrics['rows_quarantined']:.0f} it could not use (malformed lines, unusable values: see "
            f"the collect stage's quarantine); the steps below start from the other "
            f"{collect_metrics['rows_kept']:.0f}.", ""]


def _step_table(metrics: dict[str, float]) -> list[str]:
    steps = [k.removesuffix(".rows_in") for k in metrics if k.endswith(".rows_in")]
    rows = [f"| {s} | {metrics[f'{s}.rows_in']:.0f} | {metrics[f'{s}.rows_kept']:.0f} | "
            f"{metrics[f'{s}.rows_quarantined']:.0f} |" for s in steps]
    return [
        f"**{metrics['rows_in']:.0f} rows in = {metrics['rows_kept']:.0f} kept + "
        f"{metrics['rows_quarantined']:.0f} quarantined.**", "",
        "| step | rows in | kept | quarantined |", "|---|---|---|---|", *rows, "",
    ]


def _split_table(stats: CardStats) -> list[str]:
    return ["| split | rows |", "|---|---|", *(f"| {n} | {rows} |" for n, rows in stats.rows.items()), ""]


def _balance_table(metrics: dict[str, float], column: str) -> list[str]:
    classes = sorted({k.split(".")[1] for k in metrics if k.startswith(f"{column}.") and k.endswith(".before")})
    weights = any(f"{column}.{c}.weight" in metrics for c in classes)
    rows = [f"| {c} | {metrics.get(f'{column}.{c}.before', 0):.0f} | {metrics.get(f'{column}.{c}.after', 0):.0f} |"
            + (f" {metrics.get(f'{column}.{c}.weight', float('nan')):.3f} |" if weights else "") for c in classes]
    header = "| class | before | after |" + (" loss weight |" if weights else "")
    return [f"## `{column}` in the train split, before and after balancing", "", header,
            "|---" * (4 if weights else 3) + "|", *rows, ""]


def _marked_rows(stats: CardStats) -> list[str]:
    lines = [f"- **{n} train rows {MARKERS[marker]}** (column `{marker}` is true on them)"
             for marker, n in stats.marked.items() if n]
    return ["## Rows that are not real data", "", *lines, ""] if lines else []


def _label_table(stats: CardStats) -> list[str]:
    counts = pd.DataFrame(stats.labels).fillna(0).astype(int)
    rows = [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in counts.iterrows()]
    return ["## Labels per split (train after balancing)", "", "| label | " + " | ".join(counts.columns) + " |",
            "|---" * (len(counts.columns) + 1) + "|", *rows, ""]


def _histogram(title: str, unit: str, values: np.ndarray, bins: int = 8, counted: str = "rows") -> list[str]:
    if not len(values):
        return []
    counts, edges = np.histogram(values, bins=bins if values.min() < values.max() else 1)  # one value: one bar
    peak = max(counts.max(), 1)
    rows = [f"| {edges[i]:.0f}–{edges[i + 1]:.0f} | {c} | {'█' * round(BAR_WIDTH * c / peak)} |"
            for i, c in enumerate(counts)]
    return [f"## {title}", "",
            f"median {np.median(values):.0f}, 95th percentile {np.percentile(values, 95):.0f}, max {values.max()}",
            "", f"| {unit} | {counted} | |", "|---|---|---|", *rows, ""]


def _image_sizes_section(images: ImageStats) -> list[str]:
    pruned = (f"; the {images.pruned} that no kept or quarantined row names any more (originals a step rewrote, "
              "images of rows collect set aside) were removed" if images.pruned else "")
    store = [f"The dataset's image store holds {images.files} files{pruned}.", ""]
    if images.unreadable:
        store += [f"**Images of the train split that do not open: {images.unreadable}.** Training stops at the first; "
                  "add `{step: drop_undecodable_images}` to clean.steps.", ""]
    if not len(images.sizes):
        return store
    width, height = images.sizes[:, 0], images.sizes[:, 1]
    return [*_histogram("Image sizes in the train split (width x height, pixels)", "pixels", width * height,
                        counted="images"),
            f"width: median {np.median(width):.0f}, min {width.min()}, max {width.max()}; height: median "
            f"{np.median(height):.0f}, min {height.min()}, max {height.max()}", "", *store]


def _image_examples(thumbnails: list[Thumbnail]) -> list[str]:
    """Thumbnails with their text, the images embedded as data: URLs (see the module's docstring)."""
    rows = [f"| ![train row {t.row}](data:image/jpeg;base64,{base64.b64encode(t.jpeg).decode()}) | "
            f"{_cell(t.question)} | {_cell(t.answer)} |" for t in thumbnails]
    return ["## Examples (train)", "", "| image | question | answer |", "|---|---|---|", *rows, ""]


def _quarantine_reasons(stats: CardStats, top: int = 8) -> list[str]:
    """Reasons grouped by their pattern (numbers collapsed: "duplicate of row #"), with one real example each."""
    if not stats.reasons:
        return ["## Quarantine", "", "Nothing was quarantined.", ""]
    grouped = sorted(stats.reasons.items(), key=lambda item: -item[1][0])[:top]
    rows = [f"| {step} | {_cell(pattern)} | {n} | {_cell(example)} |" for (step, pattern), (n, example) in grouped]
    return ["## Quarantine reasons", "", "| step | reason | rows | example |", "|---|---|---|---|", *rows, ""]


def _examples(frame: pd.DataFrame) -> list[str]:
    shown = [c for c in ("raw_prompt", "raw_completion") if c in frame] or \
        [c for c in frame.columns if c not in ("source", "source_row", "embedding")]
    rows = [" | ".join(_cell(str(v)) for v in r) for r in frame[shown].itertuples(index=False)]
    return ["## Examples (train)", "", "| " + " | ".join(shown) + " |", "|---" * len(shown) + "|",
            *(f"| {r} |" for r in rows), ""]


def _cell(text: str, width: int = 100) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
