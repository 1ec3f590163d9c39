"""Bad environments and command lines: one `error:` line naming the variable or path and the fix, exit 2, no
traceback, before anything runs. Each case runs `ftflow` as a new process, the way a terminal does, since the
environment is read as the process starts."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bad_input.harness import assert_user_error, invoke, invoke_process, write_recipe
from tests.conftest import DEMO_RECIPE

RUN = ["run", DEMO_RECIPE, "--until", "collect"]


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _a_file(tmp: Path) -> Path:
    path = tmp / "not-a-folder"
    path.write_text("")
    return path


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 1 MB filesystem with no space left (a tmpfs: mounting one needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        (mount / "home").mkdir()
        with open(mount / "filler", "wb") as filler, pytest.raises(OSError, match="No space left"):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        yield mount / "home"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# (environment from a temporary folder, fragments the error line must hold)
CASES: dict[str, tuple[Callable[[Path], dict[str, str]], tuple[str, ...]]] = {
    "ftflow-home-is-a-file": (lambda tmp: {"FTFLOW_HOME": str(_a_file(tmp))}, ("FTFLOW_HOME=", "is a file")),
    "ftflow-home-under-a-file": (lambda tmp: {"FTFLOW_HOME": str(_a_file(tmp) / "home")},
                                 ("FTFLOW_HOME=", "not-a-folder/home", "cannot write there")),
    "ftflow-home-unwritable": (lambda tmp: {"FTFLOW_HOME": "/sys/ftflow-home"},
                               ("FTFLOW_HOME=/sys/ftflow-home", "cannot write there")),
    "prefect-home-is-a-file": (lambda tmp: {"FTFLOW_HOME": str(tmp / "home"), "PREFECT_HOME": str(_a_file(tmp))},
                               ("PREFECT_HOME=", "is a file")),
    "sqlite-url-with-a-password": (lambda tmp: {"MLFLOW_TRACKING_URI": f"sqlite://bob:s3cret@/{tmp}/mlflow.db"},
                                   ("MLFLOW_TRACKING_URI=sqlite://bob:***@", "takes no user, password or host")),
    "sqlite-url-without-a-file": (lambda tmp: {"MLFLOW_TRACKING_URI": "sqlite://"},
                                  ("MLFLOW_TRACKING_URI=sqlite://", "names no database file")),
    "sqlite-url-in-a-missing-folder": (lambda tmp: {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/missing/mlflow.db"},
                                       ("MLFLOW_TRACKING_URI=", "missing does not exist")),
    "tracking-uri-unknown-scheme": (lambda tmp: {"MLFLOW_TRACKING_URI": "ftp://example.org/mlflow"},
                                    ("MLFLOW_TRACKING_URI=ftp://example.org/mlflow", "unknown scheme 'ftp'")),
    "tracking-server-not-running": (lambda tmp: {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"},
                                    ("MLFLOW_TRACKING_URI=http://127.0.0.1:", "nothing answers")),
    "prefect-api-not-running": (lambda tmp: {"PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api"},
                                ("PREFECT_API_URL=http://127.0.0.1:", "nothing answers")),
    "prefect-api-not-a-url": (lambda tmp: {"PREFECT_API_URL": "localhost:4200"},
                              ("PREFECT_API_URL=localhost:4200", "not a Prefect API URL")),
    "prefect-api-password-hidden": (lambda tmp: {"PREFECT_API_URL": "http://me:hunter2@127.0.0.1:4200/ui"},
                                    ("PREFECT_API_URL=http://me:***@127.0.0.1:4200/ui", "not a Prefect API URL")),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_environment(case, tmp_path):
    environment, fragments = CASES[case]
    env = environment(tmp_path)
    env.setdefault("FTFLOW_HOME", str(tmp_path / "home"))
    env.setdefault("PREFECT_HOME", str(Path(env["FTFLOW_HOME"]) / "prefect"))
    outcome = invoke_process(RUN, env=env)
    assert_user_error(outcome, *fragments)
    assert "s3cret" not in outcome.stderr and "hunter2" not in outcome.stderr  # error lines end up in logs


def test_ftflow_home_on_a_full_disk(full_disk):
    outcome = invoke_process(RUN, env={"FTFLOW_HOME": str(full_disk), "PREFECT_HOME": str(full_disk / "prefect")})
    assert_user_error(outcome, f"FTFLOW_HOME={full_disk}")


@pytest.mark.parametrize(("args", "fragments"), [
    pytest.param(["run", Path("/nonexistent/missing.yaml")], ("/nonexistent/missing.yaml",),
                 id="recipe-file-missing"),
    pytest.param(["run", DEMO_RECIPE.parent], (str(DEMO_RECIPE.parent), "is a folder"), id="recipe-path-is-a-folder"),
    pytest.param(["run", DEMO_RECIPE, "--until", "trian"], ("--until", "'trian' is not a stage", "collect"),
                 id="until-misspelt"),
    pytest.param(["run", DEMO_RECIPE, "--until", ""], ("--until", "'' is not a stage"), id="until-empty"),
    pytest.param(["run", DEMO_RECIPE, DEMO_RECIPE, "--until", "train"], ("--until", "give one recipe"),
                 id="until-with-a-chain"),
])
def test_a_bad_command_line(args, fragments, tmp_path):
    outcome = invoke_process(args, env={"FTFLOW_HOME": str(tmp_path / "home")})
    assert_user_error(outcome, *fragments)


@pytest.mark.usefixtures("prefect_harness")
def test_a_failing_stage_s_user_error_is_one_line_and_verbose_shows_its_traceback(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("FTFLOW_VERBOSE", "0")  # the CLI sets it for the process: restored after the test
    (tmp_path / "qa.jsonl").write_text('{"question": "What is BP?", "reply": "blood pressure"}\n')
    recipe = write_recipe(tmp_path, data={"sources": [{"type": "jsonl", "path": "qa.jsonl"}]})
    args = ["run", recipe, "--until", "collect"]

    quiet = invoke(args, capfd)
    assert_user_error(quiet, "stage collect failed: DataError", "qa.jsonl")

    verbose = invoke(["--verbose", *args], capfd)
    assert verbose.code == 2 and len(verbose.errors) == 1
    assert "Traceback (most recent call last)" in verbose.stderr
