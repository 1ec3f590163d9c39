"""Library noise off: a clean run shows progress and results. Called by the CLI and the flows before their work,
and by each process of a distributed training run (ftcore/training/distributed.py), which starts afresh."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """A clean run shows progress and results, not a wall of library warnings; with `ftflow --verbose`
    (FTFLOW_VERBOSE=1, inherited by the processes a run starts) they all show."""
    if os.environ.get("FTFLOW_VERBOSE") == "1":
        return
    for name in ("mlflow", "alembic", "httpx", "transformers", "datasets", "peft", "trl", "urllib3", "bitsandbytes",
                 "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (".*does not have many workers.*", ".*Tokenizer.*", ".*torch_dtype.*", ".*pin_memory.*",
                    ".*loss_type=None.*", ".*copying from a non-meta parameter.*"):
        warnings.filterwarnings("ignore", message=pattern)
    # MLflow warns about dataset-source ambiguity and integer columns on every log_input; neither applies here.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
