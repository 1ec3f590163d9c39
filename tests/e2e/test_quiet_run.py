"""A real `ftflow run`, as a user starts it, prints one line per stage and its table: no library warnings, no data
preparation bars, no Prefect log lines; `--verbose` brings them back. Run as a subprocess with the environment a user
has (none of the quiet settings the test suite itself applies), through the train stage, where TRL's and datasets'
bars and torch's warnings appear."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import DEMO_RECIPE, REPO, TINY_OVERRIDES

FTFLOW = str(Path(sys.executable).parent / "ftflow")
# What a quiet run must not print: library warnings, progress bars of data preparation and training, and Prefect's
# console log lines (`HH:MM:SS.mmm | INFO | Flow run 'x' - ...`, "Finished in state", "Starting temporary server").
NOISE = re.compile(r"Warning|warn|Map:|Tokeniz|%\||\| (INFO|WARNING) +\||Finished in state|temporary server|"
                   r"Flow run '|Task run '", re.IGNORECASE)
STAGE_LINE = re.compile(r"^[✓✗] (\w+) \d+\.\d s")


def ftflow_run(home: Path, until: str, *options: str) -> subprocess.CompletedProcess:
    # The user's environment: what ftflow's settings (flows/settings.py) would set is left for it to set.
    own = ("PREFECT_", "MLFLOW_", "FTFLOW_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "DASK_", "PYTHONWARNINGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env |= {"FTFLOW_HOME": str(home), "HF_HUB_OFFLINE": "1", "FTFLOW_PREFECT_SERVER": "temporary"}
    overrides = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    done = subprocess.run([FTFLOW, *options, "run", str(DEMO_RECIPE), *overrides, "--until", until], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_a_run_prints_one_line_per_stage_and_no_library_noise(tmp_path: Path):
    done = ftflow_run(tmp_path / "quiet", "train")
    output = done.stdout + done.stderr
    assert not [line for line in output.splitlines() if NOISE.search(line)]
    stages = [m[1] for line in done.stderr.splitlines() if (m := STAGE_LINE.match(line))]
    assert stages == ["collect", "clean_balance", "init", "train"]


def test_verbose_shows_what_a_quiet_run_hides(tmp_path: Path):
    done = ftflow_run(tmp_path / "verbose", "clean_balance", "--verbose")
    assert [line for line in (done.stdout + done.stderr).splitlines() if NOISE.search(line)]
