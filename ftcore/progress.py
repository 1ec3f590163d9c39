"""What a long stage shows while it works: one bar on a terminal, cleared when done, and nothing where stderr is not
a terminal (tests, Prefect workers, a log file), whose readers get the stage's log lines instead."""

from __future__ import annotations

import sys


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(total: int, what: str, unit: str = "examples"):
    """A tqdm bar of `total` units (examples, requests) described as `what`; it erases itself when closed, so a
    stage that runs one pass after another keeps one line."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit=unit, leave=False, dynamic_ncols=True, disable=not on_terminal())


def duration(seconds: float) -> str:
    """`2m10s`, `1h05m`, `42s`: a time left, to the precision a reader of a progress line needs."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
