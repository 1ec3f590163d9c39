"""The local Prefect server that `ftflow` reuses between runs (flows/prefect_server.py), with real servers: two
starts in all. Each command runs in its own process, as `ftflow run` does: a process counts as a user of the server
until it exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.prefect_server import answers, read_record, record_path
from tests.conftest import REPO

pytestmark = pytest.mark.integration
CONNECT = "from flows.prefect_server import use_local_server as u; s = u(); print(s.url, s.pid, s.started)"


def env_for(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "FTFLOW_PREFECT_SERVER")}
    return env | {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def connect(env: dict[str, str]) -> tuple[str, int, bool]:
    done = subprocess.run([sys.executable, "-c", CONNECT], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    url, pid, started = done.stdout.split()
    return url, int(pid), started == "True"


def gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
            return True
        time.sleep(0.2)
    return False


def test_the_first_run_starts_the_server_the_next_reuses_it_and_server_stop_stops_it(tmp_path):
    env = env_for(tmp_path / "prefect")
    url, pid, started = connect(env)
    try:
        assert started and answers(url)
        assert connect(env) == (url, pid, False)  # reused: same server, not started again
        assert subprocess.run([str(Path(sys.executable).parent / "ftflow"), "server", "status"], env=env,
                              capture_output=True, text=True).stdout.startswith(url)
    finally:
        stopped = subprocess.run([str(Path(sys.executable).parent / "ftflow"), "server", "stop"], env=env,
                                 capture_output=True, text=True)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert gone(pid, 30) and not answers(url) and not record_path(tmp_path / "prefect").exists()


def test_an_unused_server_stops_itself_after_the_idle_time(tmp_path):
    env = env_for(tmp_path / "prefect", FTFLOW_PREFECT_IDLE_MINUTES="0.05")  # 3 s
    url, pid, started = connect(env)
    assert started
    assert gone(pid, 60), "the watchdog did not stop the idle server"
    assert not answers(url) and not record_path(tmp_path / "prefect").exists()


def test_a_record_of_a_dead_server_counts_as_none(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record_path(tmp_path).write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": dead.pid}))
    assert read_record(tmp_path) is None


def test_the_test_suite_and_a_users_own_server_never_use_the_local_server(monkeypatch):
    from flows.prefect_server import use_local_server

    assert use_local_server() is None  # conftest: FTFLOW_PREFECT_SERVER=temporary
    monkeypatch.setenv("FTFLOW_PREFECT_SERVER", "local")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert use_local_server() is None


@pytest.mark.parametrize("verbose", [False, True])
def test_library_bars_and_prefects_console_info_are_off_unless_verbose(monkeypatch, verbose):
    from flows.settings import QUIET, VERBOSE, configure_environment

    for key in QUIET:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(VERBOSE, "1" if verbose else "0")
    configure_environment()
    assert all((key in os.environ) is not verbose for key in QUIET)


def test_each_stage_is_one_line_as_it_ends():
    from flows.summary import stage_line

    assert stage_line("init", {"status": "cached", "duration_s": 0.04}) == "✓ init 0.0 s (cached)"
    assert stage_line("train", {"status": "failed", "duration_s": 3.1, "error": "ValueError: bad"}) == \
        "✗ train 3.1 s: ValueError: bad"
