"""`ftflow ui` and `ftflow worker` for real, each in a fresh home where it starts the local Prefect server. `ui`: both
UIs answer, and Ctrl-C stops every process it started (the server, its watchdog, MLflow's UI and its workers).
`worker`: it polls the local server, and a SIGTERM stops Prefect's worker process with it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from flows.prefect_server import read_record
from tests.conftest import REPO

pytestmark = pytest.mark.integration
FTFLOW = str(Path(sys.executable).parent / "ftflow")
URL_LINE = re.compile(r"^(MLflow|Prefect) UI:\s+(http://\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_urls(ui: subprocess.Popen, timeout_s: float) -> dict[str, str]:
    """The URLs `ftflow ui` prints, read until its `Ctrl-C stops them.` line."""
    urls: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    for line in ui.stdout:
        if found := URL_LINE.match(line):
            urls[found[1]] = found[2]
        if line.startswith("Ctrl-C stops them") or time.monotonic() > deadline:
            break
    assert set(urls) == {"MLflow", "Prefect"}, f"ftflow ui printed {urls}; exit code {ui.poll()}"
    return urls


def descendants(process: subprocess.Popen) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(process.pid).children(recursive=True)
    return []


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def test_ftflow_ui_serves_both_uis_and_ctrl_c_stops_every_process_it_started(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FTFLOW_", "MLFLOW_"))}
    env |= {"FTFLOW_HOME": str(tmp_path / "ftflow"), "PREFECT_HOME": str(tmp_path / "prefect"), "HF_HUB_OFFLINE": "1"}
    ui = subprocess.Popen([FTFLOW, "ui", "--port", str(free_port())], env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started: list[psutil.Process] = []  # everything under `ftflow ui`, whichever session each runs in
    try:
        urls = read_urls(ui, timeout_s=240)
        for url in urls.values():
            assert httpx.get(url, timeout=10).status_code == 200, url
        record = read_record(tmp_path / "prefect")
        assert record is not None and record["url"] == urls["Prefect"]
        started = descendants(ui)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "flows.prefect_server" in names and "prefect server start" in names.replace("-m ", "")
        assert "mlflow" in names

        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=120) == 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
        assert read_record(tmp_path / "prefect") is None
    finally:  # however the test ends, nothing it started outlives it
        kill_all([*started, *descendants(ui)])
        if (record := read_record(tmp_path / "prefect")) is not None:  # a server that came up after a failure
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=30)


def test_ftflow_worker_takes_runs_from_the_local_server_and_a_sigterm_stops_its_worker(tmp_path: Path):
    """A service manager stops `ftflow worker` with SIGTERM, which reaches it alone: Prefect's worker process must go
    with it rather than poll on, orphaned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FTFLOW_", "MLFLOW_"))}
    env |= {"FTFLOW_HOME": str(tmp_path / "ftflow"), "PREFECT_HOME": str(tmp_path / "prefect"), "HF_HUB_OFFLINE": "1"}
    worker = subprocess.Popen([FTFLOW, "worker"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        first = worker.stdout.readline()
        assert first.startswith("Worker ") and "started" in first, first
        record = read_record(tmp_path / "prefect")
        assert record is not None and httpx.get(f"{record['url']}/api/health", timeout=10).status_code == 200
        server = {record["pid"], *(p.pid for p in psutil.Process(record["pid"]).children(recursive=True))}
        started = [p for p in descendants(worker) if p.pid not in server]  # the server outlives it: idle stop
        assert "prefect worker start" in " ".join(" ".join(p.cmdline()) for p in started).replace("-m ", "")

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    finally:
        kill_all([*started, *descendants(worker)])
        if (record := read_record(tmp_path / "prefect")) is not None:  # the local server it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def test_a_child_that_ignores_its_stop_signal_is_killed_after_the_grace_period(monkeypatch):
    """`ftflow ui` and `ftflow worker` wait STOP_GRACE_S for what they started, then kill its whole session: a hung
    stop must not keep a terminal or a service manager waiting."""
    from flows import cli_ops

    monkeypatch.setattr(cli_ops, "STOP_GRACE_S", 1)
    stubborn = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(flush=True); " \
               "time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True, stdout=subprocess.PIPE)
    process.stdout.readline()  # its handler is set and its child started
    child = descendants(process)
    assert child
    started = time.monotonic()
    cli_ops.stop_process(process, signal.SIGTERM)
    assert process.returncode == -signal.SIGKILL and time.monotonic() - started < 10
    _, alive = psutil.wait_procs(child, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
