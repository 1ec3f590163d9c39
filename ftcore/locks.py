"""File locks between the processes that share an FTFLOW_HOME: concurrent runs, and a run that outlived its process.

flock(2) locks belong to an open file and the kernel drops them when the process dies, however it dies (kill -9
included): a lock never outlives its holder, so no stale lock file ever needs cleaning up by hand.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block, waiting while another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class Lease:
    """Taken by a run for as long as it lives: while its process lives the lease is held, and once the process is
    gone (finished, crashed or killed) it is free, which is how a later run tells a run that died from one still
    running."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a")  # noqa: SIM115 (held open until release: the open file holds the lock)
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        self._handle.close()


def abandoned(path: Path) -> bool:
    """Whether the lease at `path` exists and no process holds it (its run died without finishing)."""
    try:
        with open(path) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # held (BlockingIOError), or no lease there: nothing known about that run
        return False
    return True
