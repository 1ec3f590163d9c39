"""Vision-language models (objective vision_language) scored on the test split: their answers about the test images
against the references (character and word error rates, CIDEr, BLEU, ROUGE-L, exact match, token F1: whichever
evaluate.metrics names), and the candidate's latency on single image requests.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd

from ftcore.columns import IMAGES_COLUMN
from ftcore.data.images import open_image
from ftcore.evaluation.config import EvaluateConfig
from ftcore.evaluation.domain import domain_scores
from ftcore.evaluation.example_metrics import GENERATION_METRICS, score
from ftcore.evaluation.intervals import CANDIDATE, ModelScores, Rows
from ftcore.models.generate import generate_with_images
from ftcore.models.load import load_trained
from ftcore.progress import progress_bar
from ftcore.training.vision import chat_turns

log = logging.getLogger(__name__)


def image_questions(test: pd.DataFrame) -> pd.DataFrame:
    """Per test row: the chat up to its last answer (`chat`, content parts), the image files, the question as
    written (the last user turn's text) and the reference answer."""
    rows = []
    for chat, cell in zip(test["messages"], test[IMAGES_COLUMN], strict=True):
        prompt, (answer,) = chat_turns(json.loads(chat))
        question = next((m for m in reversed(prompt) if m["role"] == "user"), {"content": []})
        rows.append({"chat": prompt, "images": json.loads(cell), "raw_prompt": _text(question["content"]),
                     "raw_completion": _text(answer["content"])})
    return pd.DataFrame(rows)


def _text(parts: list[dict]) -> str:
    return "".join(part.get("text", "") for part in parts)


def evaluate_image_models(models: dict, test: pd.DataFrame,
                          cfg: EvaluateConfig) -> tuple[ModelScores, dict[str, float], pd.DataFrame]:
    """Every model's per-example scores on the test rows, the candidate's latency, and the predictions: each
    model's answers and per-example scores beside the questions, the references and the image files."""
    questions = image_questions(test)
    predictions = questions.drop(columns=["chat"])
    scores: ModelScores = {}
    plain: dict[str, float] = {}
    references = questions["raw_completion"].tolist()
    for name, path in models.items():
        model, processor = load_trained(path)
        log.info("scoring %s on %d test examples", name, len(questions))
        with progress_bar(len(questions), f"{name}: answering") as bar:
            outputs = [o.strip() for o in answered(model, processor, questions, cfg.max_new_tokens, cfg.batch_size,
                                                    bar.update)]
        predictions[name] = outputs
        scores[name] = {}
        for metric in (m for m in cfg.metrics if m in GENERATION_METRICS):
            _, stats, module = score(metric, outputs, references)
            scores[name][metric] = Rows(stats, module.aggregate)
            if stats.ndim == 1:
                predictions[f"{name}.{metric}"] = stats
        for spec in cfg.domain_metrics:
            scores[name][spec.metric] = Rows(domain_scores(spec.metric, spec.params(), outputs, references,
                                                           questions["raw_prompt"].tolist()))
        if name == CANDIDATE and cfg.latency_probes:
            plain |= {f"{name}.{k}": v for k, v in latency(model, processor, questions, cfg).items()}
    return scores, plain, predictions


def answered(model, processor, questions: pd.DataFrame, max_new_tokens: int, batch_size: int,
             progress=None) -> list[str]:
    """Greedy answers to `image_questions`, the images opened batch by batch."""
    answers = []
    for start in range(0, len(questions), batch_size):
        batch = questions.iloc[start: start + batch_size]
        images = [[open_image(path) for path in paths] for paths in batch["images"]]
        answers += generate_with_images(model, processor, batch["chat"].tolist(), images, max_new_tokens, batch_size,
                                        progress)
    return answers


def latency(model, processor, questions: pd.DataFrame, cfg: EvaluateConfig) -> dict[str, float]:
    """Seconds the candidate takes to answer one image request (images opened and processed included), over the
    first evaluate.latency_probes test rows, after one warm-up request."""
    probes = questions.head(cfg.latency_probes)
    answered(model, processor, probes.head(1), cfg.max_new_tokens, 1)  # the first call pays for lazy initialisation
    seconds = []
    for k in range(len(probes)):
        started = time.perf_counter()
        answered(model, processor, probes.iloc[k: k + 1], cfg.max_new_tokens, 1)
        seconds.append(time.perf_counter() - started)
    p50, p95 = np.percentile(seconds, [50, 95])
    return {"latency_p50_s": float(p50), "latency_p95_s": float(p95)}
