"""Embedded defaults: Prefect's ephemeral API under `$FTFLOW_HOME/prefect`, nothing to start by hand.

Must run before Prefect is imported, since Prefect reads its settings at import time. Variables the user has set
(PREFECT_API_URL, PREFECT_HOME, MLFLOW_TRACKING_URI, ...) always win.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ftcore.paths import home
from ftcore.quiet import quiet_libraries

DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # start-up takes ~15 s on 2 cores
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    # Off: Prefect's print capture breaks libraries that capture stdout themselves (dill, used by datasets).
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    # A run's output is the stage table; per-file download and weight-loading bars would bury it.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # Dask logs every scheduler, nanny and worker start and stop at INFO; the Prefect UI shows the parts' task runs.
    "DASK_LOGGING__DISTRIBUTED": "warning",
    # ftcore logs through `logging` (it never imports Prefect); this puts its records in the run's Prefect logs,
    # e.g. the command the other machines of a multi-node training run must run. Outside a run (ftflow export)
    # they go to the console only.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ftcore",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def configure_environment() -> None:
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    # Prefect creates only the last folder of PREFECT_HOME; a missing parent makes its server fail to start.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("ftcore").setLevel(logging.INFO)  # what a stage says about its work (resumed from, ...)
    quiet_libraries()
