"""What ftflow guarantees around a run's life (docs/operations.md): a killed run is ended by the next run of its
recipe, concurrent runs on one FTFLOW_HOME both succeed, and a full disk is one line with the summary written.

The kill and the concurrent runs are real `ftflow run` processes: the faults happen between processes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from ftcore import tracking
from tests.bad_input.harness import REPO, assert_user_error, invoke, invoke_process
from tests.conftest import DEMO_RECIPE, TINY_OVERRIDES

TINY = [arg for override in TINY_OVERRIDES for arg in ("--set", override)]


def _environment(home: Path) -> dict[str, str]:
    return {"FTFLOW_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}


def _start(args: list, home: Path, log: Path) -> subprocess.Popen:
    """`ftflow ARGS` in a new process group (with the Prefect server it starts), output into `log`."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **_environment(home)}, cwd=REPO,
                                start_new_session=True)


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, f"ended before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.5)


def _runs(experiment: str) -> list:
    client = tracking.client()
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _flow_run_state(home: Path, flow_run_id: str) -> str:
    """The flow run's state as the embedded Prefect server stored it (its server is gone with its process)."""
    with sqlite3.connect(home / "prefect" / "prefect.db") as db:
        return db.execute("SELECT state_type FROM flow_run WHERE id = ?", (flow_run_id,)).fetchone()[0]


def test_a_killed_run_is_ended_by_the_next_run_of_its_recipe(ftflow_home, tmp_path):
    log = tmp_path / "killed.log"
    killed = _start(["run", DEMO_RECIPE, *TINY], ftflow_home, log)
    try:
        _wait_for(log, "✓ init", killed, timeout=600)  # the stage's line (flows/summary.py)
        time.sleep(2)  # into the train stage
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(killed.pid, signal.SIGKILL)  # the Prefect server it started, orphaned by the kill
    (dead,) = _runs("clinical-qa")
    assert dead.info.status == "RUNNING"  # what the kill left: nothing ended it
    flow_run_id = dead.data.tags["ftflow.prefect_flow_run_id"]
    assert _flow_run_state(ftflow_home, flow_run_id) == "RUNNING"

    again = invoke_process(["run", DEMO_RECIPE, *TINY, "--until", "collect"], env=_environment(ftflow_home))

    assert again.code == 0, again.stderr
    assert f"run {flow_run_id} (MLflow run {dead.info.run_id}) was killed" in again.stderr
    assert "marked KILLED in MLflow and Crashed in Prefect" in again.stderr
    ended = tracking.client().get_run(dead.info.run_id)
    assert ended.info.status == "KILLED" and "its process died" in ended.data.tags["ftflow.ended"]
    assert _flow_run_state(ftflow_home, flow_run_id) == "CRASHED"


@pytest.mark.new_home
def test_two_first_runs_at_once_on_a_new_home_both_succeed(ftflow_home, tmp_path):
    """Both set up MLflow's and Prefect's stores on the same new FTFLOW_HOME at the same moment."""
    logs = [tmp_path / f"run-{i}.log" for i in range(2)]
    runs = [_start(["run", DEMO_RECIPE, "--until", "clean_balance"], ftflow_home, log) for log in logs]
    for run, log in zip(runs, logs, strict=True):
        assert run.wait(timeout=600) == 0, log.read_text()
    assert [r.info.status for r in _runs("clinical-qa")] == ["FINISHED", "FINISHED"]


# --- a full disk ------------------------------------------------------------------------------------------------
# A filesystem that fills at a chosen point needs root to mount; the disk filling is simulated where it happens
# instead: the write that fails raises what a full disk raises (OSError ENOSPC), itself or wrapped as libraries do.


def _disk_fills_writing_the_collected_rows(monkeypatch):
    """The collect stage's Parquet writer: the disk fills after the first rows reached the file."""
    from ftcore import parquet_io

    write = parquet_io.ParquetSink.write

    def write_then_fill(self, *args, **kwargs):
        write(self, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(parquet_io.ParquetSink, "write", write_then_fill)
    return ["stage collect failed: StorageError", "artifacts/collect/", "no space left on the device",
            "it needs more than the"]


def _disk_fills_under_mlflow(monkeypatch):
    """MLflow copying a stage's artifacts: it wraps the copy's errors (as seen on a 12 MB tmpfs)."""

    def copy_fails(run_id, stage, output, cached):
        copied = Path(tracking.artifact_root().removeprefix("file://")) / "stages" / stage
        try:
            raise shutil.Error([("data_card.md", str(copied), f"[Errno 28] No space left on device: '{copied}'")])
        except shutil.Error as e:
            raise MlflowException("Failed to copy the specified code path into the model artifacts") from e

    monkeypatch.setattr(tracking, "log_stage_output", copy_fails)
    return ["stage collect failed: StorageError", "mlartifacts/stages/collect", "no space left on the device"]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("fill", [_disk_fills_writing_the_collected_rows, _disk_fills_under_mlflow],
                         ids=["stage-output", "mlflow-artifacts"])
def test_a_full_disk_is_one_line_naming_the_path_and_the_summary_is_written(fill, ftflow_home, capfd,
                                                                            monkeypatch):
    monkeypatch.setenv("FTFLOW_VERBOSE", "0")
    fragments = fill(monkeypatch)

    outcome = invoke(["run", DEMO_RECIPE, "--until", "clean_balance", "--set", "stages.retries=2"], capfd)

    assert_user_error(outcome, *fragments)
    assert outcome.stderr.count("Retry") == 0  # a full disk stays full: not retried
    (summary,) = (ftflow_home / "runs").glob("*/summary.json")
    written = json.loads(summary.read_text())
    assert written["stages"]["collect"]["status"] == "failed" and written["failure_is_user_error"]
    assert [p.name for p in (ftflow_home / "artifacts" / "collect").iterdir() if p.suffix == ".tmp"] == []
