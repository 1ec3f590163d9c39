"""The local Prefect server that `ftflow` reuses between runs, instead of Prefect's temporary server per process
(about 9 s to start here, every run).

The first command that needs Prefect starts `prefect server start` on a loopback port, detached, under a small
watchdog process (`python -m flows.prefect_server`), and records its URL and the watchdog's pid in
`$PREFECT_HOME/ftflow-server.json`; later commands point PREFECT_API_URL at it when it answers its health check. A
record whose server is dead or does not answer is replaced. Each process using the server holds a shared flock on
`ftflow-server.users` while it lives (the kernel drops it however the process ends); the watchdog stops the server
once nobody has held it for FTFLOW_PREFECT_IDLE_MINUTES (default 30), and `ftflow server stop` stops it at once.
Start, reuse and the idle stop all happen under PREFECT_HOME's setup lock, so two runs never start two servers and a
run never reuses a server that is stopping.

A user's own PREFECT_API_URL always wins; FTFLOW_PREFECT_SERVER=temporary keeps Prefect's per-process server (the
test suite sets it: its runs use Prefect's test harness). Prefect is not imported here: this runs before it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ftcore.errors import UserError
from ftcore.locks import file_lock

SWITCH = "FTFLOW_PREFECT_SERVER"  # local (default): the reused server; temporary: Prefect's own, per process
IDLE_MINUTES = "FTFLOW_PREFECT_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
STARTUP_TIMEOUT_S = 120  # start-up takes 9-16 s on 2 cores, more when the machine is loaded
CHECK_EVERY_S = 1.0  # how often the watchdog looks for users
PREFERRED_PORT = 4200  # Prefect's usual port, so the UI's address stays the same; any free port when it is taken

_users_handle = None  # this process's shared lock on the users file, held until it exits


def prefect_home() -> Path:
    return Path(os.environ["PREFECT_HOME"]).expanduser()


def record_path(home: Path) -> Path:
    return home / "ftflow-server.json"


def log_path(home: Path) -> Path:
    return home / "ftflow-server.log"


def wanted() -> bool:
    """Whether this process should use the local server: not when the user named a server, nor when
    FTFLOW_PREFECT_SERVER=temporary."""
    mode = os.environ.get(SWITCH, "local")
    if mode not in ("local", "temporary"):
        raise UserError(f"{SWITCH}={mode}: use local (a Prefect server reused between runs) or temporary (Prefect's "
                        "own server, started and stopped by each run)")
    return mode == "local" and not os.environ.get("PREFECT_API_URL")


@dataclass(frozen=True)
class LocalServer:
    url: str  # the UI's; the API is under /api
    pid: int  # the watchdog's
    started: bool  # by this process (else it was running already)


def use_local_server() -> LocalServer | None:
    """Point PREFECT_API_URL at the local server, starting it when none answers; None when this process does not use
    it (see `wanted`). Must run before Prefect is imported."""
    return connect() if wanted() else None


def connect() -> LocalServer:
    """The local server, started when none answers, with PREFECT_API_URL pointed at it; this process counts as
    its user until it exits or calls `release`."""
    home = prefect_home()
    with file_lock(home / ".setup.lock"):
        _hold_users_lock(home)  # before the check: the watchdog cannot stop a server this process found alive
        record, started = read_record(home), False
        if record is None or not answers(record["url"]):
            if record is not None:
                stop_server(record)  # hung: not answering
            record, started = _start(home), True
    os.environ["PREFECT_API_URL"] = f"{record['url']}/api"
    return LocalServer(record["url"], record["pid"], started)


def release(server: LocalServer) -> None:
    """This process no longer uses the server; stop it now if this process started it and nobody else uses it (else
    its watchdog stops it once idle)."""
    global _users_handle
    if _users_handle is not None:
        _users_handle.close()
        _users_handle = None
    home = prefect_home()
    with file_lock(home / ".setup.lock"):
        if server.started and not in_use(home):
            stop_server({"pid": server.pid})


def read_record(home: Path) -> dict | None:
    """The recorded server, when its watchdog process still lives."""
    try:
        record = json.loads(record_path(home).read_text())
    except (OSError, ValueError):
        return None
    return record if _alive(record["pid"]) else None


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def stop_server(record: dict, timeout_s: float = 30) -> None:
    """Stop the recorded server's watchdog (it stops the server) and wait until it is gone; the record goes too."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(record["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record["pid"], signal.SIGKILL)  # the watchdog leads its session: it and the server
    record_path(prefect_home()).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _hold_users_lock(home: Path) -> None:
    global _users_handle
    if _users_handle is None:
        _users_handle = open(home / "ftflow-server.users", "a")  # noqa: SIM115 (the open file holds the lock)
        fcntl.flock(_users_handle, fcntl.LOCK_SH)


def in_use(home: Path) -> bool:
    """Whether any process holds the users lock."""
    with open(home / "ftflow-server.users", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _free_port() -> int:
    for port in (PREFERRED_PORT, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def idle_seconds() -> float:
    raw = os.environ.get(IDLE_MINUTES, str(DEFAULT_IDLE_MINUTES))
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1
    if minutes <= 0:
        raise UserError(f"{IDLE_MINUTES}={raw}: give the minutes (a positive number) after which an unused local "
                        "Prefect server stops")
    return minutes * 60


def _start(home: Path) -> dict:
    """Start the watchdog (which starts the server) detached, and wait until the server answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    with open(log_path(home), "w") as log:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "flows.prefect_server", str(port), str(idle_seconds())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
            start_new_session=True,  # outlives this run; not stopped by the terminal's Ctrl-C
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not answers(url):
        if watchdog.poll() is not None or time.monotonic() > deadline:
            stop_server({"pid": watchdog.pid})
            raise UserError(f"the local Prefect server did not start (its log: {log_path(home)}); set {SWITCH}="
                            "temporary to use a per-run server instead")
        time.sleep(0.2)
    record = {"url": url, "pid": watchdog.pid}
    record_path(home).write_text(json.dumps(record))
    return record


def watch(port: int, idle_s: float) -> None:
    """The watchdog: run the server; stop it after `idle_s` without users, or on SIGTERM."""
    home = prefect_home()
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], preexec_fn=_die_with_parent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    idle_since = time.monotonic()
    try:
        while server.poll() is None:
            time.sleep(CHECK_EVERY_S)
            if in_use(home):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_s:
                with file_lock(home / ".setup.lock"):  # no run is between finding the server and using it
                    if not in_use(home):
                        _stop_child(server)
                        _forget(home)
                        return
    finally:
        _stop_child(server)
        _forget(home)


def _stop_child(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _forget(home: Path) -> None:
    """Remove the record if it is this watchdog's (a replaced one names another)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(record_path(home).read_text())["pid"] == os.getpid():
            record_path(home).unlink()


def _die_with_parent() -> None:
    """The server gets SIGTERM if the watchdog dies, even by SIGKILL: no orphan server (Linux; elsewhere the
    watchdog's own stop is all there is)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]))
