"""How much data a recipe trains on: rows and tokens, from the cleaned train split when a run has written one.

The train split lives in clean_balance's content-addressed folder, whose name depends on the collected rows; rather
than collect again, the advisor finds it through the run summaries (`$FTFLOW_HOME/runs/*/summary.json`): the newest
run of the same recipe (same content hash), else the newest run of the same recipe file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftcore.columns import TEXT_COLUMNS
from ftcore.data.sources import read_source
from ftcore.data.sources.config import FileSource, HfDatasetSource
from ftcore.paths import home
from ftcore.recipe import Recipe


@dataclass(frozen=True)
class DataStats:
    rows_train: int | None  # None: the sources are queries or URLs, which planning does not read
    tokens_per_row: float
    seq_len: int  # the padded length of the longest batch: the longest train row, at most train.max_length
    source: str  # where the figures come from, for the reader
    vocab_size: int | None = None  # a scratch model's: what its tokenizer reaches on the split (may be < asked)

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
    rows = rows_in_sources(recipe)
    if rows is None:
        return DataStats(None, max_length, max_length, "no cleaned train split and sources planning does not read "
                                                      "(queries, URLs); tokens per row = train.max_length")
    rows_train = int(rows * (1 - recipe.data.split.validation - recipe.data.test_fraction))
    return DataStats(rows_train, max_length, max_length,
                     f"no cleaned train split yet: {rows} source rows x train share, before cleaning; tokens per "
                     f"row = train.max_length (run `ftflow run RECIPE --until clean_balance` for real figures)")


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
    """Rows of the split, and its rows' lengths in the model's tokens (+1 for the EOS the SFT trainer appends),
    cut at train.max_length as training cuts them."""
    import pandas as pd

    frame = pd.read_parquet(split.path)
    texts = frame[TEXT_COLUMNS[recipe.data.format]].astype(str).agg("".join, axis=1).tolist()
    max_length = recipe.train.max_length
    tokenizer = _tokenizer(recipe, texts)
    lengths = [min(len(ids) + 1, max_length) for ids in tokenizer(texts)["input_ids"]] or [0]
    which = "this recipe" if split.same_recipe else "this recipe file, before its latest changes"
    return DataStats(len(frame), sum(lengths) / len(lengths), max(lengths),
                     f"cleaned train split of run {split.run_id} ({which}), in the model's tokens",
                     len(tokenizer) if recipe.model.source == "scratch" else None)


def _tokenizer(recipe: Recipe, texts: list[str]):
    if recipe.model.source == "scratch":
        from ftcore.models.scratch import train_tokenizer

        # The tokenizer init trains, on the same texts (a row's prompt + completion)
        return train_tokenizer(texts, recipe.model.scratch.vocab_size)
    from ftcore.models.folders import pretrained_source
    from ftcore.models.load import load_tokenizer

    source = pretrained_source(recipe.model, files=False)
    return load_tokenizer(source.location, recipe.model.trust_remote_code, source.gguf_file)


def rows_in_sources(recipe: Recipe) -> int | None:
    """Rows in local files and saved datasets. Queries and URLs are not read: planning has no side effects."""
    total = 0
    for source in recipe.data.sources:
        if not (isinstance(source, FileSource) or (isinstance(source, HfDatasetSource) and source.local_path())):
            return None
        total += sum(len(chunk.rows) for chunk in read_source(source, recipe.runtime.batch_rows))
    return total
