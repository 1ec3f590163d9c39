"""The pipeline's monitor stage: the version just registered is served in-process (`ftcore.serving.server.serving`)
with its request log inside the stage's folder; the test split's inputs and the canaries are sent through HTTP as
any client would send them, and the window is exactly that traffic.

The endpoint is served without a response cache, so every probe reaches the model, and without reloads: the stage
judges this version only. A vision-language model is probed with the test split's chats about images, each image
sent inline as a data: URL, and its drift compares the probes' images with the training split's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ftcore.columns import IMAGES_COLUMN
from ftcore.data.images import with_image_paths
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.monitor.assess import assess
from ftcore.monitor.canaries import ask_canaries, load_canaries
from ftcore.monitor.config import MonitorConfig
from ftcore.monitor.endpoint import CLASSIFIER, Endpoint, EndpointError, image_chat
from ftcore.monitor.record import SOURCE_TAG, log_assessment, write_files
from ftcore.monitor.window import read_window, training_images, training_inputs
from ftcore.outputs import DatasetOutput, DeployOutput, MonitorOutput
from ftcore.progress import progress_bar
from ftcore.safety.config import ToxicityScreenConfig
from ftcore.serving.config import CacheConfig, RequestLogConfig, ServeConfig

REQUEST_LOG = "requests.db"
Probe = str | list[dict]  # a prompt (or a text to classify), or a chat's turns before its last answer


class MonitorJob(BaseModel):
    """What the monitor stage probes and judges: the version deploy registered, the dataset whose test inputs probe
    it and whose train split is the drift reference, the recipe's `monitor` section, the toxicity scorer, and how a
    canary is asked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployed: DeployOutput
    dataset: DatasetOutput
    monitor: MonitorConfig
    toxicity: ToxicityScreenConfig | None = Field(description="evaluate.safety.toxicity: how outputs are screened")
    prompt_template: str | None = Field(description="how a canary is written for the model; None asks it as chat "
                                                    "turns (ftcore.monitor.canaries.question_template)")


def monitor_stage(job: MonitorJob, out_dir: Path) -> MonitorOutput:
    """Serve the deployed version, probe it with `monitor.probe_size` test inputs and the canaries (asked with the
    prompt template, or as chat turns when None), assess that traffic against the training split's inputs, and log
    the pass to the `<model>-monitor` experiment. The folder holds the reports and the request log. A terminal
    shows the probe requests answered of the total."""
    # Imported here: the server's FastAPI takes ~0.25 s to import, which every run loading this module (for
    # MonitorJob, a cached run too) would pay.
    from ftcore.serving.server import serving

    registered_model, version, cfg = job.deployed.registered_model, job.deployed.version, job.monitor
    splits = job.dataset.splits
    with atomic_dir(out_dir) as out:
        log_url = f"sqlite:///{out / REQUEST_LOG}"
        with serving(f"models:/{registered_model}/{version}", stage_serve_config(log_url)) as base_url:
            endpoint = Endpoint(base_url, timeout_s=cfg.timeout_s)
            kind = endpoint.health()["kind"]
            test = with_image_paths(pd.read_parquet(splits["test"]), splits["test"])
            probes = probe_requests(test, cfg.probe_size)
            with progress_bar(len(probes), f"probing models:/{registered_model}/{version}", unit="requests") as bar:
                for probe in probes:
                    send_probe(endpoint, kind, probe, cfg.max_new_tokens)
                    bar.update()
            canaries = None
            if cfg.canaries is not None:
                canaries = ask_canaries(endpoint, load_canaries(cfg.canaries), job.prompt_template,
                                        cfg.max_new_tokens)
        reference = training_inputs(pd.read_parquet(splits["train"]))
        assessment = assess(registered_model, version, f"the stage's {cfg.probe_size} probes and the canaries",
                            read_window(log_url, None, None, None), reference, canaries, cfg, job.toxicity,
                            reference_images=training_images(splits["train"], cfg.drift))
        names = {name: f.name for name, f in write_files(assessment, out).items()}
    files = {name: out_dir / file for name, file in names.items()}
    log_assessment(assessment, files, {SOURCE_TAG: "pipeline"})
    return MonitorOutput(path=out_dir, content_hash=hash_dir(out_dir), breaches=assessment.breaches,
                         metrics=assessment.metrics, artifacts=files)


def stage_serve_config(log_url: str) -> ServeConfig:
    return ServeConfig(cache=CacheConfig(max_entries=0), reload_interval_s=0,
                       request_log=RequestLogConfig(url=log_url, sample_rate=1.0))


def probe_requests(test: pd.DataFrame, size: int) -> list[Probe]:
    """`size` requests made of the split's inputs, repeated when it has fewer: prompts as the model saw them in
    training, texts, or chats up to their last assistant turn (with their images, whose files `images` names:
    `with_image_paths`)."""
    if test.empty:
        return []
    rows = test.iloc[[i % len(test) for i in range(size)]]
    if IMAGES_COLUMN in rows:
        return [image_chat(_before_last_answer(json.loads(chat)), json.loads(paths))
                for chat, paths in zip(rows["messages"], rows[IMAGES_COLUMN], strict=True)]
    if "messages" in rows:
        return [_before_last_answer(json.loads(chat)) for chat in rows["messages"]]
    return rows["prompt" if "prompt" in rows else "text"].astype(str).tolist()


def send_probe(endpoint: Endpoint, kind: str, probe: Probe, max_tokens: int) -> None:
    """One request; the endpoint logs it, failed or not, and the window's metrics read the log."""
    try:
        if kind == CLASSIFIER:
            endpoint.classify(str(probe))
        elif isinstance(probe, list):
            endpoint.chat(probe, max_tokens)
        else:
            endpoint.complete(probe, max_tokens)
    except EndpointError:
        pass  # counted from the request log: a 5xx as an error, a 4xx as the client's


def _before_last_answer(messages: list[dict]) -> list[dict]:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last]
