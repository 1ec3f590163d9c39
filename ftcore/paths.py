"""Where ftflow keeps its state: `$FTFLOW_HOME`, by default `.ftflow/` in the current folder."""

from __future__ import annotations

import os
from pathlib import Path

from ftcore.hashing import hash_obj, short


def home() -> Path:
    return Path(os.environ.get("FTFLOW_HOME", ".ftflow")).resolve()


def stage_dir(stage: str, *inputs: object) -> Path:
    """Content-addressed output folder of a stage: the same inputs always map to the same folder."""
    return home() / "artifacts" / stage / short(hash_obj([stage, *inputs]))
