"""The canonical dataset formats: the columns the rows of each format have once collected. They are the contract
between the data stages, which map every source onto them, and the stages that train and score models on them."""

from __future__ import annotations

from typing import Literal

# Canonical columns of each data format; sources map their own columns onto these. Cleaning steps rewrite only
# the text columns (a label is not text to clean). A `messages` cell is a JSON list of {role, content}.
FORMAT_COLUMNS: dict[str, list[str]] = {
    "prompt_completion": ["prompt", "completion"],
    "messages": ["messages"],
    "text": ["text"],
    "text_label": ["text", "label"],
    "preference": ["prompt", "chosen", "rejected"],
    # images: a JSON list of names in the dataset's image store; messages: a chat with one placeholder per image
    # (ftcore/data/images.py).
    "image_text": ["images", "messages"],
}
LABEL_COLUMN = "label"
IMAGES_COLUMN = "images"
# Where an image sits in an image_text chat: U+FFFC, OBJECT REPLACEMENT CHARACTER, Unicode's placeholder for an
# embedded object, which no text-cleaning step takes for markup to strip.
IMAGE_PLACEHOLDER = "\ufffc"
TEXT_COLUMNS: dict[str, list[str]] = {fmt: [c for c in cols if c not in (LABEL_COLUMN, IMAGES_COLUMN)]
                                      for fmt, cols in FORMAT_COLUMNS.items()}
DataFormat = Literal["prompt_completion", "messages", "text", "text_label", "preference", "image_text"]
