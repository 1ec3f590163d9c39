"""`ftflow tune` as a user runs it: real processes on ftflow's local Prefect server (one, started by the first
command and reused), killed with SIGKILL and started again, and two worker processes sharing one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DEMO_RECIPE, REPO, TINY_OVERRIDES

# Slow (90 s with the server's start): in `make test-slow`. The same resumption and sharing of one study are tested
# in one process, faster, in tests/ftcore/test_tuning_search.py and tests/e2e/test_tune_flow.py.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FTFLOW = str(Path(sys.executable).parent / "ftflow")

# Two ranks and a range of learning rates: every trial a configuration of its own. No pruner, so each trial trains
# to the end (the kill below must find one training). Checkpoints every 5 steps.
TUNE = {"space": {"train.learning_rate": {"log_uniform": [3.0e-3, 3.0e-2]}, "method.r": {"choice": [4, 8]}},
        "objectives": [{"metric": "token_f1"}], "n_trials": 3, "pruner": "none"}
SEARCH = [*TINY_OVERRIDES, "train.epochs=3", "train.save_steps=4", f"tune={json.dumps(TUNE)}"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A user's environment: ftflow's local Prefect server (started by the first command, stopped at the end) in a
    PREFECT_HOME of the module's, trial heartbeats every second (a killed trial is found stale after three)."""
    folder = tmp_path_factory.mktemp("tune-processes")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "FTFLOW_PREFECT_SERVER")}
    env |= {"PREFECT_HOME": str(folder / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "FTFLOW_TUNE_HEARTBEAT_S": "1", "OMP_NUM_THREADS": "1"}
    yield env
    subprocess.run([FTFLOW, "server", "stop"], env=env, capture_output=True, timeout=120)


def tune(env: dict[str, str], home: Path, *args: str) -> subprocess.Popen:
    sets = [arg for item in SEARCH for arg in ("--set", item)]
    return subprocess.Popen([FTFLOW, "tune", str(DEMO_RECIPE), *sets, *args], env={**env, "FTFLOW_HOME": str(home)},
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finished(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)


def wait_for(condition, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def training_past_a_checkpoint(outputs: Path) -> bool:
    """Whether one training has finished (its output folder is there, not the hidden one it is written in) and
    another has a checkpoint."""
    unfinished = [c for c in outputs.glob("*.checkpoints/checkpoint-*")
                  if not (outputs / c.parent.name.removesuffix(".checkpoints")).exists()]
    published = [m for m in outputs.glob("*/model/config.json") if not m.parents[1].name.startswith(".")]
    return bool(unfinished) and bool(published)


def test_a_killed_search_resumes_without_repeating_a_finished_trial(env, tmp_path, monkeypatch):
    home = tmp_path / "ftflow"
    first = tune(env, home, "--json")
    # Killed while its second trial trains, past a checkpoint.
    wait_for(lambda: training_past_a_checkpoint(home / "artifacts" / "train"), 600, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    resumed = finished(tune(env, home, "--json"))
    rows = resumed["trials"]
    assert [row["state"] for row in rows] == ["complete", "failed", "complete", "complete"]
    assert rows[1]["failure"] == "its worker stopped (no heartbeat)"
    assert rows[2]["retry_of"] == 1 and rows[2]["params"] == rows[1]["params"]  # the same configuration, again
    params = [json.dumps(row["params"], sort_keys=True) for row in rows if row["state"] == "complete"]
    assert len(set(params)) == 3  # no finished trial run again
    from ftcore import tracking

    monkeypatch.setenv("FTFLOW_HOME", str(home))  # the processes' MLflow store
    retried = tracking.client().get_run(rows[2]["mlflow_run_id"]).data.metrics
    assert retried["train/resumed_from_step"] > 0  # from the killed trial's checkpoint
    assert resumed["final"]["model"]["version"] == "1"


def test_two_workers_share_one_study_without_running_a_configuration_twice(env, tmp_path):
    result = finished(tune(env, tmp_path / "ftflow", "--json", "--workers", "2"))
    rows = result["trials"]
    assert len(rows) == 3 and all(row["state"] == "complete" for row in rows)
    assert len({json.dumps(row["params"], sort_keys=True) for row in rows}) == 3
    assert len({row["worker"] for row in rows}) == 2  # two processes ran them
    log = tmp_path / "ftflow" / "tune" / result["study"] / "worker-1.log"
    assert "✓ train" in log.read_text()
