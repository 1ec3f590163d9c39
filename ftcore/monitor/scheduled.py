"""The scheduled monitor pass: the endpoint's request log over the last `window` for a registered model, its
canaries asked of the live endpoint, its inputs compared with the training data of the version being monitored
(the clean_balance dataset logged with the run that registered it)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import make_url

from ftcore.data.retained import DATASET_ARTIFACT, champion_data
from ftcore.errors import UserError
from ftcore.fs import atomic_dir
from ftcore.models.registered import ModelRef
from ftcore.monitor.assess import Assessment, assess
from ftcore.monitor.canaries import CanaryResult, ask_canaries, load_canaries
from ftcore.monitor.config import MonitorConfig
from ftcore.monitor.endpoint import Endpoint
from ftcore.monitor.record import SOURCE_TAG, log_assessment, write_files
from ftcore.monitor.window import read_window, training_inputs
from ftcore.paths import home
from ftcore.safety.config import ToxicityScreenConfig
from ftcore.serving.config import RequestLogConfig


@dataclass
class MonitorPass:
    assessment: Assessment
    files: dict[str, Path]
    mlflow_run_id: str


def monitor_endpoint(ref: ModelRef, cfg: MonitorConfig, toxicity: ToxicityScreenConfig | None,
                     prompt_template: str | None, endpoint: str | None, window: timedelta,
                     tags: dict[str, str]) -> MonitorPass:
    """Assess the last `window` of `ref`'s traffic; the report goes to $FTFLOW_HOME/monitor/NAME/<time> and to a run
    of the `<name>-monitor` experiment (with `tags`)."""
    name, version = str(ref.name), str(ref.version)
    until = time.time()
    since = until - window.total_seconds()
    log_url = cfg.request_log or RequestLogConfig().resolved_url()
    rows = read_window(log_url, since, until, name)
    unmeasured: dict[str, str] = {}
    canaries = _ask_canaries(cfg, prompt_template, endpoint, unmeasured)
    reference = _training_inputs(ref, unmeasured)
    assessment = assess(name, version, _describe(log_url, since, until, window), rows, reference, canaries, cfg,
                        toxicity, unmeasured)
    folder = home() / "monitor" / name / datetime.fromtimestamp(until, UTC).strftime("%Y%m%dT%H%M%SZ")
    with atomic_dir(folder) as out:
        names = {key: f.name for key, f in write_files(assessment, out).items()}
    files = {key: folder / file for key, file in names.items()}
    return MonitorPass(assessment, files, log_assessment(assessment, files, {SOURCE_TAG: "schedule", **tags}))


def _ask_canaries(cfg: MonitorConfig, prompt_template: str | None, endpoint: str | None,
                  unmeasured: dict[str, str]) -> list[CanaryResult] | None:
    if cfg.canaries is None:
        return None
    if endpoint is None:
        unmeasured["canary_accuracy"] = "no endpoint to ask: set monitor.endpoint or the flow's endpoint parameter"
        return None
    return ask_canaries(Endpoint(endpoint, timeout_s=cfg.timeout_s), load_canaries(cfg.canaries), prompt_template,
                        cfg.max_new_tokens)


def _training_inputs(ref: ModelRef, unmeasured: dict[str, str]) -> list[str]:
    """The inputs of the version's train split; none (and the reason) when its run logged no dataset."""
    try:
        data = champion_data(ref)
    except UserError:
        unmeasured["drift_score"] = f"no training data: the run that registered {ref.label} has no readable " \
                                    f"{DATASET_ARTIFACT}"
        return []
    return training_inputs(pd.read_parquet(data.train))


def _describe(log_url: str, since: float, until: float, window: timedelta) -> str:
    """The window in words, naming the request log (its password hidden), so an empty window can be traced."""
    start, end = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") for t in (since, until))
    log = make_url(log_url).render_as_string(hide_password=True)
    return f"requests logged at {log} from {start} to {end} UTC (the last {window})"
