"""Errors a user can cause. The CLI prints them as one line each and exits with code 2."""

from __future__ import annotations

import errno
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftcore.paths import home


class UserError(Exception):
    """A problem the user can fix (bad recipe, bad data, missing file). Its message names the place and the fix."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe that does not load or validate; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class DataError(UserError):
    """Input data that cannot be used: an unreadable file, a missing column, too few rows."""


def first_line(error: BaseException) -> str:
    """An exception's message in one line (drivers and servers often add pages of detail)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class StorageError(UserError):
    """Where ftflow writes is full, read-only, or not a folder: the machine's to fix, not the code's."""


# OS errors that say where a write went, not what the code did wrong; errno -> what it means for the user.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.ENOTDIR: "a part of this path is a file, not a folder"}
STORAGE_FIXES = {errno.EROFS: "make it writable", errno.ENOTDIR: "remove the file in its way"}
# SQLite's own codes for the same (MLflow's and Prefect's stores), which carry no path.
SQLITE_STORAGE_ERRORS = {"SQLITE_FULL": errno.ENOSPC, "SQLITE_READONLY": errno.EROFS}


@dataclass(frozen=True)
class Pending:
    """An output being written: the temporary folder it is written into, and the folder it becomes."""

    temporary: Path
    final: Path


def storage_error(error: BaseException, output: Pending | None = None) -> StorageError | None:
    """The storage problem behind `error` as one line naming the path and the fix, or None when there is none.

    Libraries wrap the OSError (MLflow's copy errors, SQLAlchemy's, Prefect's), so the whole chain of causes is
    searched. `output`: the output being written (ftcore/fs.py: atomic_dir); a failure inside it names the output
    and how much of it had been written, a lower bound of the space it needs."""
    if isinstance(error, StorageError):  # said already, where the most was known
        return error
    found = _storage_cause(error)
    if found is None:
        return None
    code, failed = found
    path = Path(failed) if failed else home()  # SQLite's errors carry no path: its databases live in FTFLOW_HOME
    needs = ""
    if output is not None and _under(path, output.temporary):
        written = sum(f.stat().st_size for f in output.temporary.rglob("*") if f.is_file())
        path = output.final
        needs = f"; it needs more than the {_size(written)} written before the disk filled" if written else ""
    message = f"{path}: {STORAGE_ERRNOS[code]}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        message += f" ({_free_space(path)}){needs}"
    fix = STORAGE_FIXES.get(code, "free space there")
    if _under(path, home()):
        fix += " or set FTFLOW_HOME to a folder elsewhere"
    return StorageError(f"{message}: {fix}")


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's (or their machine's) to fix: shown as one line, never as a traceback."""
    return isinstance(error, UserError) or _storage_cause(error) is not None


def _storage_cause(error: BaseException) -> tuple[int, str | None] | None:
    """(errno, path) of the first storage OSError in `error`'s chain of causes."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, shutil.Error):  # a tree copy: one (source, destination, reason) per failed file
            for _, destination, reason in error.args[0] if error.args and isinstance(error.args[0], list) else []:
                code = _errno_in(str(reason))
                if code in STORAGE_ERRNOS:
                    return code, destination
        elif isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error.errno, error.filename2 or error.filename
        elif getattr(error, "sqlite_errorname", None) in SQLITE_STORAGE_ERRORS:
            return SQLITE_STORAGE_ERRORS[error.sqlite_errorname], None
        error = error.__cause__ or error.__context__
    return None


def _errno_in(reason: str) -> int | None:
    match = re.search(r"\[Errno (\d+)\]", reason)
    return int(match.group(1)) if match else None


def _free_space(path: Path) -> str:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(existing)
    return f"{_size(usage.free)} free of {_size(usage.total)} there"


def _size(size: int) -> str:
    if size < 2**20:
        return f"{size / 2**10:.0f} KB"
    return f"{size / 2**20:.1f} MB" if size < 2**30 else f"{size / 2**30:.1f} GB"


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
