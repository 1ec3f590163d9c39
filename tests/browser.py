"""A real headless browser for the tests: Debian's chromium driven by Playwright (sync API).

Playwright's own browser download is unreachable here, so it drives the Debian binary through `executable_path`.
Request `browser_page` in a test (tests/conftest.py loads this module as a plugin); `screenshot(page, name)` saves
a PNG into `$FTFLOW_SCREENSHOTS` (CI keeps that folder) or, without it, the test's tmp dir.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No calls home: the machine is offline and a test must not wait on them.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_TMP_DIRS: dict[int, Path] = {}  # id(page) -> its test's tmp dir, the screenshots' folder without FTFLOW_SCREENSHOTS


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI (CI=true), where a skipped browser test would hide an untested page."""
    message = f"{reason}: `apt-get install chromium` and `pip install -e .[dev]` (playwright)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"a browser is required in CI: {message}")
    pytest.skip(message)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[object]:
    """A Playwright `Page` in a fresh headless chromium profile; closed with the browser after the test."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is absent")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        page = context.pages[0] if context.pages else context.new_page()
        _TMP_DIRS[id(page)] = tmp_path
        try:
            yield page
        finally:
            _TMP_DIRS.pop(id(page), None)
            context.close()


def screenshot(page: object, name: str) -> Path:
    """Save a full-page PNG of `page` as `name` (".png" added when missing) and return its path."""
    folder = Path(os.environ.get("FTFLOW_SCREENSHOTS") or _TMP_DIRS[id(page)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name.endswith(".png") else f"{name}.png")
    page.screenshot(path=str(path), full_page=True)
    return path

