"""Vision-language models (objective vision_language) scored on the test split: their answers about the test images
against the references (character and word error rates, CIDEr, BLEU, ROUGE-L, exact match, token F1: whichever
evaluate.metrics names, and its domain metrics), and the candidate's latency on single image requests.

The base model is also scored with k-shot prompting (evaluate.fewshot: k), as for text: k training pictures with
their questions and answers as earlier turns of each test chat.
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
from ftcore.evaluation.intervals import CANDIDATE, FEWSHOT, ModelScores, Rows
from ftcore.evaluation.language import BASE, FEWSHOT_SEED
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


def evaluate_image_models(models: dict, test: pd.DataFrame, cfg: EvaluateConfig,
                          demos: pd.DataFrame | None = None) -> tuple[ModelScores, dict[str, float], pd.DataFrame]:
    """Every model's per-example scores on the test rows; with `demos` (training rows, images as file paths) and
    evaluate.fewshot, the base model's few-shot scores as `fewshot`. Also the candidate's latency, and the predictions:
    each model's answers and per-example scores beside the questions, the references and the image files."""
    questions = image_questions(test)
    predictions = questions.drop(columns=["chat"])
    scores: ModelScores = {}
    plain: dict[str, float] = {}
    for name, path in models.items():
        model, processor = load_trained(path)
        runs = [(name, questions)]
        if name == BASE and cfg.fewshot and demos is not None:
            runs.append((FEWSHOT, fewshot_questions(questions, demos, cfg.fewshot)))
        for label, asked in runs:
            scores[label], predictions[label] = answer_rows(model, processor, asked, cfg, label)
            for metric, rows in scores[label].items():
                if rows.values.ndim == 1:
                    predictions[f"{label}.{metric}"] = rows.values
        if name == CANDIDATE and cfg.latency_probes:
            plain |= {f"{name}.{k}": v for k, v in latency(model, processor, questions, cfg).items()}
    return scores, plain, predictions


def fewshot_questions(questions: pd.DataFrame, train: pd.DataFrame, k: int) -> pd.DataFrame:
    """The test questions with k training examples (the same k for every question, drawn with a fixed seed) as
    earlier user/assistant turns of the chat, their images before the question's own (images go to the processor in
    the order their parts appear)."""
    shown = image_questions(train.sample(n=min(k, len(train)), random_state=FEWSHOT_SEED))
    turns, images = [], []
    for chat, paths, answer in zip(shown["chat"], shown["images"], shown["raw_completion"], strict=True):
        turns += [m for m in chat if m["role"] != "system"]
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        images += paths
    return questions.assign(
        chat=[[*(m for m in chat if m["role"] == "system"), *turns, *(m for m in chat if m["role"] != "system")]
              for chat in questions["chat"]],
        images=[images + paths for paths in questions["images"]])


def answer_rows(model, processor, questions: pd.DataFrame, cfg: EvaluateConfig,
                label: str) -> tuple[dict[str, Rows], list[str]]:
    """Per metric, one row of statistics per question (ftcore/evaluation/example_metrics.py), and the greedy answers.
    A terminal shows the questions answered, for `label`."""
    log.info("scoring %s on %d test examples", label, len(questions))
    with progress_bar(len(questions), f"{label}: answering") as bar:
        outputs = [o.strip() for o in answered(model, processor, questions, cfg.max_new_tokens, cfg.batch_size,
                                                bar.update)]
    references = questions["raw_completion"].tolist()
    rows = {}
    for metric in (m for m in cfg.metrics if m in GENERATION_METRICS):
        _, stats, module = score(metric, outputs, references)
        rows[metric] = Rows(stats, module.aggregate)
    for spec in cfg.domain_metrics:
        rows[spec.metric] = Rows(domain_scores(spec.metric, spec.params(), outputs, references,
                                               questions["raw_prompt"].tolist()))
    return rows, outputs


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
