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


def file_hashes(path: Path) -> dict[str, str]:
    """Each file's hash by its path relative to `path` (POSIX form), in path order."""
    root = Path(path)
    return {file.relative_to(root).as_posix(): hash_file(file)
            for file in sorted(p for p in root.rglob("*") if p.is_file())}


def hash_files(hashes: dict[str, str]) -> str:
    """The folder hash of `file_hashes`' answer (or of a part of it)."""
    digest = hashlib.sha256()
    for name in sorted(hashes, key=lambda n: n.split("/")):  # Path order (by parts), as hashes were always made
        digest.update(name.encode())
        digest.update(hashes[name].encode())
    return digest.hexdigest()


def hash_dir(path: Path) -> str:
    """Hash of every file's relative path and content, so renames and edits both change it."""
    return hash_files(file_hashes(path))


def short(digest: str) -> str:
    return digest[:12]
