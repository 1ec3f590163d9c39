"""The bad-input suite's one check: what a user sees after a mistake of theirs (a bad data file, recipe,
environment or request).

A user error must end with exit code 2 (or a 4xx JSON error from the endpoint), one `error:` line per problem that
names the file, field or row, and no Python traceback anywhere the user looks: the command's stdout and stderr and
whatever loggers (Prefect's among them) wrote to the process's file descriptors.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str  # the command's stderr plus what logging handlers wrote to fd 1 and 2 meanwhile

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def invoke(args: list[str], capfd: pytest.CaptureFixture) -> Outcome:
    """`ftflow ARGS` in this process (Prefect's test harness serves the API), as CliRunner sees it."""
    from flows.cli import app

    capfd.readouterr()  # drop what earlier steps of the test printed
    _prefect_console_to_current_stderr()
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash of the command itself is a bug: show it as one
    logged = capfd.readouterr()
    return Outcome(result.exit_code, result.stdout, result.stderr + logged.out + logged.err)


class _CurrentStderr(io.TextIOBase):
    """Whatever sys.stderr is when a record is written: the capture of the test running then."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_CURRENT_STDERR = _CurrentStderr()


def _prefect_console_to_current_stderr() -> None:
    """Prefect's console handlers write to the stderr of the moment logging was configured. Pointed at one test's
    capture, they would write to it after it closed, where rich keeps every record unwritten and prints them all in a
    later test: they follow the current stderr instead."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers if isinstance(h, PrefectConsoleHandler)}:
        handler.stream = handler.console.file = _CURRENT_STDERR  # not setStream: it flushes the old stream


def invoke_process(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 300) -> Outcome:
    """`ftflow ARGS` as a new process, the way a terminal runs it: for what happens before or around the
    in-process harness (the environment, Prefect's own logging set-up, the exit code of the real entry point)."""
    completed = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                               env={**os.environ, **(env or {})}, cwd=cwd or REPO, timeout=timeout)
    return Outcome(completed.returncode, completed.stdout, completed.stderr)


def assert_user_error(outcome: Outcome, *fragments: str, problems: int = 1) -> str:
    """Exit 2, `problems` error lines (each naming what `fragments` say between them), no traceback; returns the
    error lines joined."""
    shown = f"exit {outcome.code}\n--- stdout\n{outcome.stdout}\n--- stderr\n{outcome.stderr}"
    assert outcome.code == 2, shown
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    assert len(outcome.errors) == problems, shown
    joined = "\n".join(outcome.errors)
    for fragment in fragments:
        assert fragment in joined, f"{fragment!r} not in the error:\n{shown}"
    return joined


def write_recipe(folder: Path, **sections) -> Path:
    """A recipe file in `folder`, named bad-input, with `sections` (data, train, ...) as given."""
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "bad-input", **sections}, sort_keys=False))
    return path


def published(home: Path, stage: str) -> list[Path]:
    """The stage's output folders (temporary siblings of a failed write excluded)."""
    folder = home / "artifacts" / stage
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []
