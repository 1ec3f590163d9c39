"""What a window of the request log says: how many requests, how fast (p50/p95/p99 over every request, failed
ones included: a client waits for those too), how many failed (5xx: the server's fault; 4xx, the client's, are
reported apart; a client that left before its answer, 499, is neither and counts in no error rate), and how many
logged outputs the evaluate stage's toxicity scorer flags; and what inputs it compares with the training split's,
texts and images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ftcore.columns import IMAGES_COLUMN
from ftcore.data.images import open_image, with_image_paths
from ftcore.monitor.config import DriftConfig
from ftcore.monitor.drift import sample
from ftcore.serving.request_log import CLIENT_CLOSED, RequestLog

SERVER_ERROR, CLIENT_ERROR = 500, 400
CLASSIFY = "classify"  # the request log's name of the classification endpoint


def read_window(url: str, since: float | None, until: float | None, model: str | None) -> pd.DataFrame:
    """The requests logged at `url` that arrived in [since, until) for `model` (every one with None)."""
    log = RequestLog(url)
    try:
        return log.read(since=since, until=until, model=model)
    finally:
        log.close()


def traffic_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """`requests` and `disconnects` (clients that left before their answer), and when there were any: the
    latencies `latency_p50_s`, `latency_p95_s`, `latency_p99_s`; then, over the requests answered (those whose
    client stayed): `error_rate` (5xx share) and `client_error_rate` (4xx share)."""
    metrics: dict[str, float] = {"requests": float(len(rows))}
    if rows.empty:
        return metrics
    status = rows["status"].to_numpy(dtype=int)
    metrics["disconnects"] = float(np.sum(status == CLIENT_CLOSED))
    latency = rows["latency_s"].to_numpy(dtype=float)
    for q in (50, 95, 99):
        metrics[f"latency_p{q}_s"] = float(np.percentile(latency, q))
    if (shares := error_shares(status)) is not None:
        metrics["error_rate"], metrics["client_error_rate"] = shares
    return metrics


def error_shares(status: np.ndarray) -> tuple[float, float] | None:
    """The 5xx and 4xx shares of the requests answered; None when none was. A 499 (the client left before its
    answer) was not answered: it is in neither share."""
    answered = status[status != CLIENT_CLOSED]
    if not answered.size:
        return None
    return float(np.mean(answered >= SERVER_ERROR)), float(np.mean((answered >= CLIENT_ERROR) &
                                                                   (answered < SERVER_ERROR)))


def answered_outputs(rows: pd.DataFrame) -> list[str]:
    """The generated texts kept with successful requests (the server keeps text for a sample of them); a
    classifier's labels are no text to screen."""
    ok = rows[(rows["status"] < CLIENT_ERROR) & rows["output"].notna() & (rows["endpoint"] != CLASSIFY)]
    return [text for value in ok["output"].astype(str) for text in logged_texts(value)]


def logged_inputs(rows: pd.DataFrame) -> list[str]:
    """The inputs kept with the requests (a chat request's is its last user turn)."""
    return [text for value in rows["input"].dropna().astype(str) for text in logged_texts(value)]


def logged_images(rows: pd.DataFrame) -> list[dict[str, float]]:
    """The statistics of the images the logged chats carried, one per image."""
    if IMAGES_COLUMN not in rows:  # a log read from before images were kept
        return []
    return [stats for value in rows[IMAGES_COLUMN].dropna() for stats in json.loads(value)]


def logged_texts(value: str) -> list[str]:
    """A logged input or output: one text, or a JSON list of texts (a request with several inputs)."""
    if value.startswith("[") and value.endswith("]"):
        try:
            items = json.loads(value)
        except ValueError:
            return [value]
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return items
    return [value]


def training_inputs(split: pd.DataFrame) -> list[str]:
    """The training rows as the endpoint would log them as inputs: the prompts as the model saw them, the texts, or
    a chat's last user turn."""
    if "prompt" in split:
        return split["prompt"].astype(str).tolist()
    if "text" in split:
        return split["text"].astype(str).tolist()
    return [_last_user_turn(json.loads(chat)) for chat in split["messages"]]


def training_images(split_file: Path, cfg: DriftConfig) -> list[dict[str, float]]:
    """`image_stats` of a seeded sample (drift.max_rows) of a split's images, opened from the dataset's image
    store; none for a split without images."""
    # Imported here: serving's modules import FastAPI (~0.25 s), which loading the monitor stage's job must not pay.
    from ftcore.serving.images import image_stats

    split = pd.read_parquet(split_file)
    if IMAGES_COLUMN not in split:
        return []
    paths = [path for cell in with_image_paths(split, split_file)[IMAGES_COLUMN] for path in json.loads(cell)]
    return [image_stats(open_image(path)) for path in sample(paths, cfg.max_rows, np.random.default_rng(cfg.seed))]


def _last_user_turn(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
