"""The image side of a vision-language recipe's data, for the estimates: the tokens the model's processor makes of
each image, the images or tiles its vision tower sees per row, and each sampled row's length, image tokens included.

Rows go through the train stage's own collator (ftcore/training/vision.py: `ImageCollator`, TRL's vision-language
collator around the processor) one at a time, with their real images: a row is measured as training will see it (its
prompt with each image expanded into image tokens, its answer, cut at train.max_length). That takes 5 to 9 ms a row
here (the shared recipes' rows, 2 CPU cores), so IMAGE_SAMPLE_ROWS rows spread evenly over the data stand for it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ftcore.columns import IMAGES_COLUMN
from ftcore.errors import UserError, first_line
from ftcore.models.config import ModelConfig

if TYPE_CHECKING:
    from ftcore.recipe import Recipe

IMAGE_SAMPLE_ROWS = 256


@dataclass(frozen=True)
class MeasuredRow:
    tokens: int  # its length as the collator makes it (image tokens included), cut at train.max_length
    images: int
    image_tokens: int  # the processor's image tokens for its images
    tiles: int  # what the vision tower sees: each image whole (llava), or its tiles and a downsized whole (idefics3)
    input_bytes: int  # the tensors the collator hands the model for it: pixel values (a pixel mask), ids, labels


@dataclass(frozen=True)
class ImageStats:
    """Images of the sampled rows as the processor turns them into tokens and the vision tower's inputs."""

    family: str  # the model's model_type
    processor: str  # the processor's class
    rows_sampled: int
    rows_total: int
    images: int  # in the sampled rows
    tokens_per_image_mean: float
    tokens_per_image_max: int
    tokens_per_tile: int | None  # a tiling processor's image tokens per tile (Idefics3's image_seq_len)
    tiles_per_image_max: int
    tiles_per_row_mean: float
    tiles_per_row_max: int
    image_tokens_per_row_mean: float
    image_tokens_per_row_max: int
    input_bytes_per_row_max: int  # the collator's tensors for the row with the most (a batch pads to its most)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_positions(total: int, size: int = IMAGE_SAMPLE_ROWS) -> list[int]:
    """`size` positions spread evenly over `total` rows (all of them when there are fewer): the data is often
    ordered (by book, by category), so its first rows would not stand for it."""
    if total <= size:
        return list(range(total))
    return [i * total // size for i in range(size)]


def vision_processor(cfg: ModelConfig, tokenizer=None):
    """The processor init gives the recipe's model: a scratch model's built around `tokenizer` (the one init
    trains; without a split, a stand-in of its size, which tokenizes no text planning counts), a folder's own."""
    if cfg.source == "scratch":
        import torch

        from ftcore.models.scratch import build_vision_language
        from ftcore.planning.shape import stand_in_tokenizer

        with torch.device("meta"):  # the model comes with the processor: shapes only
            return build_vision_language(cfg.scratch, tokenizer or stand_in_tokenizer(cfg.scratch))[1]
    from ftcore.models.folders import pretrained_source
    from ftcore.models.load import load_processor

    source = pretrained_source(cfg, files=False)
    try:
        return load_processor(source.location, source.own_code)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"model.name_or_path: cannot load the processor of {cfg.name_or_path} ({first_line(e)}), "
                        "which turns images into tokens; a vision-language folder holds processor_config.json or "
                        "preprocessor_config.json beside its tokenizer") from None


def measure_rows(rows: pd.DataFrame, processor, max_length: int) -> list[MeasuredRow]:
    """Each row (`messages`, and `images` as file paths: ftcore/data/images.py `with_image_paths`) through the
    train stage's collator."""
    from ftcore.models.vision import image_token_id
    from ftcore.training.vision import ImageCollator

    collate = ImageCollator(processor, max_length)
    image_token = image_token_id(processor)
    measured = []
    for chat, cell in zip(rows["messages"], rows[IMAGES_COLUMN], strict=True):
        batch = collate([collator_row(chat, cell)])
        pixels = batch.get("pixel_values")  # (images or rows, [tiles,] channels, height, width)
        tiles = pixels.numel() // pixels.shape[-3:].numel() if pixels is not None else 0
        measured.append(MeasuredRow(int(batch["attention_mask"].sum()), len(json.loads(cell)),
                                    int((batch["input_ids"] == image_token).sum()), tiles,
                                    sum(tensor.nbytes for tensor in batch.values())))
    return measured


def collator_row(chat: str, images: str) -> dict[str, str]:
    """A row (its chat, and its images as a JSON list of paths) as the train stage hands it to its collator
    (ftcore/training/vision.py: `image_examples`)."""
    from ftcore.training.vision import chat_turns

    prompt, answer = chat_turns(json.loads(chat))
    return {IMAGES_COLUMN: images, "prompt": json.dumps(prompt), "completion": json.dumps(answer)}


def image_stats(rows: list[MeasuredRow], rows_total: int, family: str, processor) -> ImageStats | None:
    """The sampled rows' images; None where they hold none."""
    shown = [row for row in rows if row.images]
    if not shown:
        return None
    per_image = [row.image_tokens / row.images for row in shown]
    return ImageStats(
        family=family, processor=type(processor).__name__, rows_sampled=len(rows), rows_total=rows_total,
        images=sum(row.images for row in shown),
        tokens_per_image_mean=sum(row.image_tokens for row in shown) / sum(row.images for row in shown),
        tokens_per_image_max=round(max(per_image)), tokens_per_tile=getattr(processor, "image_seq_len", None),
        tiles_per_image_max=max(-(-row.tiles // row.images) for row in shown),
        tiles_per_row_mean=sum(row.tiles for row in rows) / len(rows), tiles_per_row_max=max(r.tiles for r in rows),
        image_tokens_per_row_mean=sum(row.image_tokens for row in rows) / len(rows),
        image_tokens_per_row_max=max(row.image_tokens for row in rows),
        input_bytes_per_row_max=max(row.input_bytes for row in rows))


def source_rows(recipe: Recipe, total: int, store: Path) -> pd.DataFrame:
    """A sample of the sources' rows (local files and saved datasets) as the collect stage maps them, their images
    written into `store` (a temporary folder) and named there by path; rows it would quarantine left out."""
    from ftcore.data.formats import to_canonical
    from ftcore.data.images import ImageReader, with_image_paths
    from ftcore.data.sources import read_source

    wanted, seen, frames = set(sample_positions(total)), 0, []
    reader = ImageReader(store / "images")
    for source in recipe.data.sources:
        for chunk in read_source(source, recipe.runtime.batch_rows):
            picked = [i for i in range(len(chunk.rows)) if seen + i in wanted]
            seen += len(chunk.rows)
            if picked:
                sample = replace(chunk, rows=chunk.rows.iloc[picked])
                frames.append(to_canonical(sample, source, recipe.data.format, holdout=False, images=reader)[0])
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["messages", IMAGES_COLUMN])
    return with_image_paths(rows, store / "sample.parquet")


def source_image_stats(recipe: Recipe, total: int) -> ImageStats | None:
    """The images of a sample of the sources' rows, before any run: the processor of the recipe's model (a
    scratch model's around a stand-in tokenizer) on them. Their text is not counted (no tokenizer is trained yet)."""
    processor = vision_processor(recipe.model)
    with tempfile.TemporaryDirectory(prefix="ftflow-plan-") as tmp:  # planning leaves nothing behind
        rows = measure_rows(source_rows(recipe, total, Path(tmp)), processor, recipe.train.max_length)
    return image_stats(rows, total, model_type(recipe.model), processor)


def model_type(cfg: ModelConfig) -> str:
    if cfg.source == "scratch":
        return cfg.scratch.architecture
    from ftcore.planning.shape import pretrained_config

    return pretrained_config(cfg).model_type
