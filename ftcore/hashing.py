"""Content hashes: the identity of recipes, datasets, models and stage outputs (and so of cache keys)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_obj(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of dict key order."""
    return hash_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_dir(path: Path) -> str:
    """Hash of every file's relative path and content, so renames and edits both change it."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(hash_file(file).encode())
    return digest.hexdigest()


def short(digest: str) -> str:
    return digest[:12]
