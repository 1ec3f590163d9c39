"""Atomic output: everything is written to a temporary sibling and renamed into place, so a crash never leaves
half a dataset or model where a later stage (or a cache hit) would read it."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ftcore.errors import Pending, storage_error
from ftcore.locks import file_lock


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final`, on failure it is removed. A full or
    read-only disk raises a StorageError naming `final` and how much of it had been written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        publish(tmp, final)
    except Exception as e:
        problem = storage_error(e, output=Pending(tmp, final))
        if problem is None:
            raise
        raise problem from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, replacing what is there. Two runs of the same stage inputs may finish at once (the
    same folder, the same content): the lock makes one replace the other whole, and the old folder is moved aside
    before it is deleted, so `final` is missing only between two renames, never half deleted while a run reads it."""
    with file_lock(final.with_name(f".{final.name}.lock")):
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old") if final.exists() else None
        if old is not None:
            final.rename(old)
        tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
