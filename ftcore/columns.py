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
}
TEXT_COLUMNS: dict[str, list[str]] = {fmt: [c for c in cols if c != "label"] for fmt, cols in FORMAT_COLUMNS.items()}
LABEL_COLUMN = "label"
DataFormat = Literal["prompt_completion", "messages", "text", "text_label", "preference"]
