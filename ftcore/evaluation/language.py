"""Language models (objectives sft, multitask, dapt) scored on the test split: on what they generate (exact match,
token F1, ROUGE, BLEU, chrF and the recipe's domain metrics) and on the likelihood of the reference (perplexity).

The base model is also scored with k-shot prompting (`fewshot`, evaluate.fewshot: k): k training examples written
before each test prompt, the no-training alternative a fine-tuned model has to beat. A multitask recipe gets every
metric per task too (`<model>.<metric>.<task>`, with its interval).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from ftcore.data.formats import TASK
from ftcore.evaluation.bootstrap import perplexity_of
from ftcore.evaluation.config import EvaluateConfig
from ftcore.evaluation.domain import domain_scores
from ftcore.evaluation.example_metrics import GENERATION_METRICS, score
from ftcore.evaluation.intervals import FEWSHOT, ModelScores, Rows, summarize
from ftcore.models.generate import completion_nlls, generate
from ftcore.models.load import load_trained, render_chat
from ftcore.progress import progress_bar

log = logging.getLogger(__name__)
FEWSHOT_SEED = 0
BASE = "base"


def evaluate_language_models(models: dict, test: pd.DataFrame, cfg: EvaluateConfig,
                             demos: pd.DataFrame | None = None) -> tuple[ModelScores, dict[str, float], pd.DataFrame]:
    """Every model's per-example scores on the test rows; with `demos` (training rows) and evaluate.fewshot, the
    base model's few-shot scores as `fewshot`. Also the per-task metrics of a multitask recipe, and the predictions:
    each model's outputs and per-example scores beside the test rows."""
    scores: ModelScores = {}
    per_task: dict[str, float] = {}
    predictions = None
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        examples = eval_examples(test, tokenizer)
        if predictions is None:
            predictions = examples.drop(columns=["prompt", "completion"])
        runs = [(name, examples)]
        if name == BASE and cfg.fewshot and demos is not None:
            runs.append((FEWSHOT, fewshot_examples(test, demos, tokenizer, cfg.fewshot)))
        for label, ex in runs:
            log.info("scoring %s on %d test examples", label, len(ex))
            scores[label], outputs = example_rows(model, tokenizer, ex, cfg, label)
            if outputs is not None:
                predictions[label] = outputs
            for metric, rows in scores[label].items():
                if rows.values.ndim == 1:
                    predictions[f"{label}.{metric}"] = rows.values
                if TASK in ex:  # multitask: every metric per task too, with its interval
                    for group, index in ex.groupby(TASK, sort=True).indices.items():
                        per_task |= summarize({label: {f"{metric}.{group}": Rows(rows.values[index],
                                                                                   rows.aggregate)}}, cfg)
    return scores, per_task, predictions


def eval_examples(test: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """What each test row asks the model (`prompt`) and the reference answer, as the model sees them (`completion`)
    and as written (`raw_prompt`, `raw_completion`, for the metrics and the predictions file). Rows of raw text
    (format text) have no question: the whole text is the reference, scored by perplexity only."""
    if "messages" in test:
        return pd.DataFrame([chat_question(json.loads(chat), tokenizer) for chat in test["messages"]])
    if "completion" not in test:
        return pd.DataFrame({"prompt": "", "completion": test["text"], "raw_prompt": "",
                             "raw_completion": test["text"]})
    columns = ["prompt", "completion", "raw_prompt", "raw_completion"] + ([TASK] if TASK in test else [])
    return test[columns].reset_index(drop=True)


def chat_question(messages: list[dict[str, str]], tokenizer, demos: list[dict[str, str]] = ()) -> dict[str, str]:
    """A chat up to its last assistant turn: that turn is the reference answer to the rendered turns before it
    (after the demonstration turns `demos`, when prompting few-shot)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    before = [m for m in messages[:last] if m["role"] == "user"]
    answer = messages[last]["content"]
    head = [m for m in messages[:last] if m["role"] == "system"]
    turns = [*head, *demos, *(m for m in messages[:last] if m["role"] != "system")]
    return {"prompt": render_chat(tokenizer, turns, generation_prompt=True), "completion": answer,
            "raw_prompt": before[-1]["content"] if before else "", "raw_completion": answer}


def fewshot_examples(test: pd.DataFrame, train: pd.DataFrame, tokenizer, k: int) -> pd.DataFrame:
    """The test examples with k training examples (the same k for every test row, drawn with a fixed seed) written
    before each prompt: as prompt + answer blocks, or as earlier user/assistant turns of a chat."""
    demos = train.sample(n=min(k, len(train)), random_state=FEWSHOT_SEED)
    if "messages" in test:
        turns = []
        for chat in demos["messages"]:
            shown = chat_question(json.loads(chat), tokenizer)
            turns += [{"role": "user", "content": shown["raw_prompt"]},
                      {"role": "assistant", "content": shown["raw_completion"]}]
        return pd.DataFrame([chat_question(json.loads(chat), tokenizer, turns) for chat in test["messages"]])
    shown = eval_examples(demos, tokenizer)
    prefix = "".join(f"{p}{c}\n\n" for p, c in zip(shown["prompt"], shown["completion"], strict=True))
    examples = eval_examples(test, tokenizer)
    return examples.assign(prompt=prefix + examples["prompt"])


def answered(model, tokenizer, prompts: list[str], cfg: EvaluateConfig, what: str) -> list[str]:
    """The model's greedy answers to `prompts`, stripped, while a terminal shows `what` done of the total."""
    with progress_bar(len(prompts), what) as bar:
        return [o.strip() for o in generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size,
                                            bar.update)]


def example_rows(model, tokenizer, examples: pd.DataFrame, cfg: EvaluateConfig,
                 label: str) -> tuple[dict[str, Rows], list[str] | None]:
    """Per metric: one row of statistics per example and the function that turns any subset of rows into the
    metric (ftcore/evaluation/example_metrics.py); and the greedy outputs when a generation or domain metric needs
    them. A terminal shows the examples done of each pass over them, for `label`."""
    rows: dict[str, Rows] = {}
    outputs = None
    wanted = [m for m in cfg.metrics if m in GENERATION_METRICS]
    if wanted or cfg.domain_metrics:
        outputs = answered(model, tokenizer, examples["prompt"].tolist(), cfg, f"{label}: answering")
        references = examples["raw_completion"].astype(str).tolist()
        for metric in wanted:
            _, stats, module = score(metric, outputs, references)
            rows[metric] = Rows(stats, module.aggregate)
        for spec in cfg.domain_metrics:
            rows[spec.metric] = Rows(domain_scores(spec.metric, spec.params(), outputs, references,
                                                   examples["raw_prompt"].astype(str).tolist()))
    if "perplexity" in cfg.metrics:
        with progress_bar(len(examples), f"{label}: perplexity") as bar:
            nlls = completion_nlls(model, tokenizer, examples["prompt"].tolist(), examples["completion"].tolist(),
                                   cfg.batch_size, bar.update)
        rows["perplexity"] = Rows(np.array(nlls, dtype=float), perplexity_of)
    return rows, outputs
