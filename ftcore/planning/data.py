"""How much data a recipe trains on: rows and tokens, from the cleaned train split when a run has written one, and
for a classifier its classes (the outputs of the head init puts on the base). For a recipe that sees images, the
tokens the processor makes of them and the tiles the vision tower sees (ftcore/planning/images.py), from a sample of
the split's rows or, before a run, of the sources' rows.

The train split lives in clean_balance's content-addressed folder, whose name depends on the collected rows; rather
than collect again, the advisor finds it through the run summaries (`$FTFLOW_HOME/runs/*/summary.json`): the newest
run of the same recipe (same content hash), else the newest run of the same recipe file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftcore.columns import FORMAT_COLUMNS, LABEL_COLUMN, TEXT_COLUMNS
from ftcore.data.formats import to_canonical
from ftcore.data.sources import Chunk, read_source
from ftcore.data.sources.config import FileSource, HfDatasetSource, Source
from ftcore.models.init import model_classes
from ftcore.paths import home
from ftcore.planning.images import ImageStats, image_stats, measure_rows, sample_positions, source_image_stats
from ftcore.recipe import Recipe

# A classifier's labels where planning finds none (sources it does not read: queries, URLs): two, the fewest a
# classifier has. Its head holds hidden x classes parameters, next to nothing beside the body.
UNKNOWN_LABELS = ("class 0", "class 1")


@dataclass(frozen=True)
class DataStats:
    rows_train: int | None  # None: the sources are queries or URLs, which planning does not read
    tokens_per_row: float
    seq_len: int  # the padded length of the longest batch: the longest train row, at most train.max_length
    source: str  # where the figures come from, for the reader
    vocab_size: int | None = None  # a scratch model's: what its tokenizer reaches on the split (may be < asked)
    classes: list[str] | None = None  # the head's outputs (init's `model_classes`); None: a causal LM
    images: ImageStats | None = None  # a vision-language recipe's images; None: text, or sources planning cannot read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainSplit:
    path: Path
    run_id: str
    same_recipe: bool


def data_stats(recipe: Recipe, recipe_path: Path) -> DataStats:
    split = find_train_split(recipe, recipe_path)
    if split is not None:
        return split_stats(recipe, split)
    max_length = recipe.train.max_length
    read = read_sources(recipe)
    rows, labels = read if read is not None else (None, set())
    classes = head_classes(recipe, labels or UNKNOWN_LABELS)
    unknown = f"; classes unknown: {len(UNKNOWN_LABELS)} counted" if labelled(recipe) and not labels else ""
    if rows is None:
        return DataStats(None, max_length, max_length, "no cleaned train split and sources planning does not read "
                                                      f"(queries, URLs); tokens per row = train.max_length{unknown}",
                         classes=classes)
    rows_train = int(rows * (1 - recipe.data.split.validation - recipe.data.test_fraction))
    images = source_image_stats(recipe, rows) if recipe.spec.sees_images else None
    return DataStats(rows_train, max_length, max_length,
                     f"no cleaned train split yet: {rows} source rows x train share, before cleaning; tokens per "
                     f"row = train.max_length (run `ftflow run RECIPE --until clean_balance` for real figures)"
                     f"{unknown}", classes=classes, images=images)


def find_train_split(recipe: Recipe, recipe_path: Path) -> TrainSplit | None:
    recipe_hash, recipe_file = recipe.content_hash(), recipe_path.resolve()
    found: list[tuple[tuple[bool, float], TrainSplit]] = []
    for summary_path in (home() / "runs").glob("*/summary.json"):
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            stage = summary["stages"]["clean_balance"]
            train = Path(stage["artifacts"]["dataset"]).parent / "train.parquet"
            same_recipe = summary["recipe_hash"] == recipe_hash
            same_file = Path(summary["recipe_path"]).resolve() == recipe_file
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a summary from another ftflow version, or a run stopped before clean_balance
        if stage.get("status") in ("completed", "cached") and (same_recipe or same_file) and train.is_file():
            rank = (same_recipe, summary_path.stat().st_mtime)
            found.append((rank, TrainSplit(train, summary["run_id"], same_recipe)))
    return max(found, key=lambda item: item[0])[1] if found else None


def split_stats(recipe: Recipe, split: TrainSplit) -> DataStats:
    """Rows of the split, its rows' lengths in the model's tokens cut at train.max_length as training cuts them, and
    a classifier's classes. The text columns only: a label is the target, not input."""
    import pandas as pd

    frame = pd.read_parquet(split.path)
    if recipe.spec.sees_images:
        return image_split_stats(recipe, split, frame)
    texts = frame[TEXT_COLUMNS[recipe.data.format]].astype(str).agg("".join, axis=1).tolist()
    max_length = recipe.train.max_length
    tokenizer = _tokenizer(recipe, texts)
    # A causal LM's trainer (TRL's) appends EOS to every row; a classifier's tokenizes the text as it is
    # (ftcore/training/examples.py: encode_classes), its tokenizer's own special tokens included either way.
    appended = 0 if recipe.spec.classifies else 1
    lengths = [min(len(ids) + appended, max_length) for ids in tokenizer(texts)["input_ids"]] or [0]
    which = "this recipe" if split.same_recipe else "this recipe file, before its latest changes"
    return DataStats(len(frame), sum(lengths) / len(lengths), max(lengths),
                     f"cleaned train split of run {split.run_id} ({which}), in the model's tokens",
                     len(tokenizer) if recipe.model.source == "scratch" else None,
                     model_classes(frame, recipe.spec))


def image_split_stats(recipe: Recipe, split: TrainSplit, frame) -> DataStats:
    """A vision-language split: a sample of its rows, with their images (`image_rows_stats`)."""
    from ftcore.data.images import with_image_paths

    which = "this recipe" if split.same_recipe else "this recipe file, before its latest changes"
    sample = with_image_paths(frame.iloc[sample_positions(len(frame))], split.path)
    return image_rows_stats(recipe, sample, frame, f"cleaned train split of run {split.run_id} ({which})")


def image_rows_stats(recipe: Recipe, rows, train, origin: str) -> DataStats:
    """`rows` (a sample of the train split `train`, images as file paths) as the train stage's collator makes them,
    in the tokens of the processor init gives the model: a scratch model's around the tokenizer init trains on the
    split, whose size the model then has."""
    from ftcore.planning.images import model_type, vision_processor

    tokenizer = vocab_size = None
    if recipe.model.source == "scratch":
        from ftcore.models.init import corpus
        from ftcore.models.scratch import train_tokenizer

        tokenizer = train_tokenizer(corpus(train), recipe.model.scratch.vocab_size, recipe.model.scratch)
        vocab_size = len(tokenizer)  # the language model's, before the processor sees the tokenizer (as in init)
    processor = vision_processor(recipe.model, tokenizer)
    measured = measure_rows(rows, processor, recipe.train.max_length)
    lengths = [row.tokens for row in measured] or [0]
    return DataStats(len(train), sum(lengths) / len(lengths), max(lengths),
                     f"{origin}: {len(rows):,} of {len(train):,} rows through the train stage's collator, images "
                     "included, in the model's tokens", vocab_size,
                     images=image_stats(measured, len(train), model_type(recipe.model), processor))


def _tokenizer(recipe: Recipe, texts: list[str]):
    if recipe.model.source == "scratch":
        from ftcore.models.scratch import train_tokenizer

        # The tokenizer init trains, on the same texts (a row's prompt + completion)
        return train_tokenizer(texts, recipe.model.scratch.vocab_size)
    from ftcore.models.folders import pretrained_source
    from ftcore.models.load import load_tokenizer

    source = pretrained_source(recipe.model, files=False)
    return load_tokenizer(source.location, recipe.model.trust_remote_code, source.gguf_file)


def read_sources(recipe: Recipe) -> tuple[int, set[str]] | None:
    """Rows in local files and saved datasets, and the labels among them (none for a format without labels).
    Queries and URLs are not read: planning has no side effects."""
    total, labels = 0, set()
    for source in recipe.data.sources:
        if not (isinstance(source, FileSource) or (isinstance(source, HfDatasetSource) and source.local_path())):
            return None
        for chunk in read_source(source, recipe.runtime.batch_rows):
            total += len(chunk.rows)
            if labelled(recipe):
                labels |= chunk_labels(chunk, source, recipe.data.format)
    return total, labels


def chunk_labels(chunk: Chunk, source: Source, data_format: str) -> set[str]:
    """The labels of a chunk's usable rows, mapped and written as collect writes them (a source's `columns:`, the
    label 1.0 read as "1")."""
    rows = to_canonical(chunk, source, data_format, holdout=False)[0]
    return set(rows[LABEL_COLUMN]) if len(rows) else set()


def labelled(recipe: Recipe) -> bool:
    """The data format has a label column (text_label)."""
    return LABEL_COLUMN in FORMAT_COLUMNS[recipe.data.format]


def head_classes(recipe: Recipe, labels: Iterable[str]) -> list[str] | None:
    """The outputs of the head init puts on the base for these labels (`model_classes`): the sorted classes of a
    classifier, None for a causal LM."""
    import pandas as pd

    return model_classes(pd.DataFrame({LABEL_COLUMN: list(labels)}, dtype=str), recipe.spec)
