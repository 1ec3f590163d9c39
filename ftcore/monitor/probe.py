"""monitor stage: send probe prompts one at a time to a registered model version and check the objectives
(latency, error rate, toxicity). The report is markdown, shown in MLflow and Prefect."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ftcore import tracking
from ftcore.config import MonitorConfig
from ftcore.evaluation.classification import classify
from ftcore.evaluation.generate import generate
from ftcore.evaluation.language import chat_question
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.load import load_trained
from ftcore.models.peft_methods import is_classifier
from ftcore.monitor.toxicity import LexiconScorer
from ftcore.outputs import MonitorOutput


@dataclass
class Probe:
    prompt: str
    output: str | None
    latency_s: float
    error: str | None


def monitor_version(
    registered_model: str, version: str, probe_split: Path, cfg: MonitorConfig, out_dir: Path
) -> MonitorOutput:
    with tempfile.TemporaryDirectory(prefix="ftflow-monitor-") as tmp:
        model_dir = tracking.download_version(registered_model, version, Path(tmp) / "model")
        model, tokenizer = load_trained(model_dir)
        respond = responder(model, tokenizer, cfg.max_new_tokens)
        probes = [run_probe(respond, p) for p in probe_prompts(probe_split, cfg.probe_size, tokenizer)]
    metrics, breaches = summarize(probes, cfg, LexiconScorer())
    report = render_report(registered_model, version, metrics, breaches, probes, cfg)
    with atomic_dir(out_dir) as out:
        (out / "report.md").write_text(report, encoding="utf-8")
    return MonitorOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        breaches=breaches,
        metrics=metrics,
        artifacts={"report": out_dir / "report.md"},
    )


def probe_prompts(split: Path, size: int, tokenizer) -> list[str]:
    """`size` requests made of the split's inputs (repeated when it has fewer): prompts, chats up to their last
    assistant turn (rendered with the model's chat template), or texts (to classify or continue)."""
    rows = pd.read_parquet(split)
    if "messages" in rows:
        prompts = [chat_question(json.loads(chat), tokenizer)["prompt"] for chat in rows["messages"]]
    else:
        prompts = rows["prompt" if "prompt" in rows else "text"].tolist()
    return [prompts[i % len(prompts)] for i in range(size)] if prompts else []


def responder(model, tokenizer, max_new_tokens: int) -> Callable[[str], str]:
    """How the served model answers one request: its predicted class, or its greedy completion."""
    if is_classifier(model):
        return lambda text: classify(model, tokenizer, [text])[0]
    return lambda prompt: generate(model, tokenizer, [prompt], max_new_tokens, batch_size=1)[0]


def run_probe(respond: Callable[[str], str], prompt: str) -> Probe:
    started = time.perf_counter()
    try:
        output = respond(prompt)
        error = None
    except Exception as e:  # a failed request is what the error-rate objective counts
        output, error = None, f"{type(e).__name__}: {e}"
    return Probe(prompt, output, time.perf_counter() - started, error)


def summarize(probes: list[Probe], cfg: MonitorConfig, scorer: LexiconScorer) -> tuple[dict[str, float], list[str]]:
    latencies = sorted(p.latency_s for p in probes)
    answered = [p.output for p in probes if p.output is not None]
    metrics = {
        "requests": len(probes),
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "error_rate": sum(p.error is not None for p in probes) / len(probes),
        "toxicity_rate": sum(map(scorer.is_toxic, answered)) / max(1, len(answered)),
    }
    limits = {"latency_p95_s": cfg.max_latency_s, "error_rate": cfg.max_error_rate,
              "toxicity_rate": cfg.max_toxicity_rate}
    breaches = [f"{k} {metrics[k]:.4g} > {limit:g}" for k, limit in limits.items() if metrics[k] > limit]
    metrics["breaches"] = len(breaches)
    return metrics, breaches


def render_report(name: str, version: str, metrics: dict, breaches: list[str], probes: list[Probe],
                  cfg: MonitorConfig) -> str:
    status = "**BREACH**: " + "; ".join(breaches) if breaches else "All objectives met."
    lines = [
        f"# Monitor report: {name} v{version}",
        "",
        status,
        "",
        "| objective | measured | limit |",
        "|---|---|---|",
        f"| latency p50 | {metrics['latency_p50_s']:.3f} s | |",
        f"| latency p95 | {metrics['latency_p95_s']:.3f} s | {cfg.max_latency_s:g} s |",
        f"| error rate | {metrics['error_rate']:.2%} | {cfg.max_error_rate:.2%} |",
        f"| toxic outputs | {metrics['toxicity_rate']:.2%} | {cfg.max_toxicity_rate:.2%} |",
        "",
        f"## Sample of {min(5, len(probes))} probes",
        "",
        "| prompt | output | latency |",
        "|---|---|---|",
    ]
    for p in probes[:5]:
        shown = p.output if p.error is None else f"ERROR {p.error}"
        lines.append(f"| {_cell(p.prompt)} | {_cell(shown)} | {p.latency_s:.3f} s |")
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:120]
