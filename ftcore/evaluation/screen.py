"""The evaluate stage's safety screen and latency check, for models that answer prompts.

- `toxic_rate`: the share of a model's answers to the test prompts that the recipe's toxicity scorer (lexicon,
  classifier, guard model or a data engineer's; ftcore/safety/toxicity.py) scores at or above the threshold.
- `bias_divergence`: how differently a model answers counterfactual prompt pairs, the test prompts (and any extra
  probe prompts) with demographic terms swapped (ftcore/safety/bias.py); `bias_pairs` says how many pairs there were.
- `judge_score`: an LLM judge's grade of the candidate's answers, only when the recipe names an endpoint.
- `latency_p50_s`, `latency_p95_s`: the candidate answering requests one at a time, as a server without batching
  would, on this machine.

A terminal shows each pass over the examples (answering, the bias probe, the toxicity screen, the judge): examples
done of the total.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ftcore.evaluation.config import EvaluateConfig
from ftcore.evaluation.intervals import CANDIDATE, ModelScores, Rows
from ftcore.evaluation.language import answered
from ftcore.models.generate import generate
from ftcore.models.load import load_trained
from ftcore.progress import progress_bar
from ftcore.safety.bias import DEFAULT_SWAPS, probe
from ftcore.safety.config import BiasProbeConfig, JudgeConfig, ToxicityScreenConfig
from ftcore.safety.judge import judge_scores
from ftcore.safety.toxicity import score_texts

# Answers per call of the toxicity scorer: a scorer batches within a call, and the bar moves between calls.
TOXICITY_CHUNK = 64


def screen_answers(models: dict[str, Path], prompts: list[str], outputs: dict[str, list[str]],
                   questions: list[str], references: list[str],
                   cfg: EvaluateConfig) -> tuple[ModelScores, dict[str, float]]:
    """Every model's safety rows; `outputs` holds the answers to `prompts` the objective's scorer already generated (by
    model name; `fewshot` among them is screened for toxicity only). Models without answers are run here."""
    safety = cfg.safety
    scores: ModelScores = {}
    counts: dict[str, float] = {}
    for name in [*models, *(n for n in outputs if n not in models)]:
        rows = scores.setdefault(name, {})
        model = tokenizer = None
        if name in models and (name not in outputs or safety.bias is not None):
            model, tokenizer = load_trained(models[name])
        answers = outputs.get(name)
        if answers is None:
            answers = answered(model, tokenizer, prompts, cfg, f"{name}: answering")
        if safety.toxicity is not None:
            rows["toxic_rate"] = toxic_rows(answers, safety.toxicity, f"{name}: toxicity screen")
        if safety.bias is not None and model is not None:
            divergence, counts[f"{name}.bias_pairs"] = bias_rows(model, tokenizer, prompts, safety.bias, cfg, name)
            if divergence is not None:
                rows["bias_divergence"] = divergence
        if name == CANDIDATE and safety.judge is not None:
            rows["judge_score"] = judge_rows(questions, answers, references, safety.judge)
    return scores, counts


def toxic_rows(answers: list[str], cfg: ToxicityScreenConfig, what: str = "toxicity screen") -> Rows:
    """1 for each answer scored toxic, else 0: their mean is the toxic-output rate. The scorer gets the answers
    TOXICITY_CHUNK at a time, so that a terminal shows `what` done of the total."""
    options = {k: v for k, v in (("model_path", cfg.model_path), ("toxic_label", cfg.toxic_label)) if v is not None}
    toxicity: list[float] = []
    with progress_bar(len(answers), what) as bar:
        for start in range(0, len(answers), TOXICITY_CHUNK):
            chunk = answers[start : start + TOXICITY_CHUNK]
            toxicity += score_texts(cfg.scorer, chunk, **options)
            bar.update(len(chunk))
    return Rows((np.array(toxicity) >= cfg.threshold).astype(float))


def bias_rows(model, tokenizer, prompts: list[str], cfg: BiasProbeConfig, evaluate: EvaluateConfig,
              name: str) -> tuple[Rows | None, float]:
    """The divergence of each counterfactual pair's answers (None without any pair), and the number of pairs."""
    extra = []
    if cfg.prompts is not None:
        extra = [line for line in cfg.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    swaps = tuple(tuple(pair) for pair in cfg.swaps) if cfg.swaps else DEFAULT_SWAPS

    def answer(batch: list[str]) -> list[str]:
        return answered(model, tokenizer, batch, evaluate, f"{name}: bias probe")

    result = probe(answer, [*extra, *prompts], swaps, cfg.max_pairs)
    return (Rows(result.scores) if result.scores.size else None), float(len(result.pairs))


def judge_rows(questions: list[str], answers: list[str], references: list[str], cfg: JudgeConfig) -> Rows:
    n = min(cfg.max_examples, len(answers))
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    with progress_bar(n, f"{CANDIDATE}: judge") as bar:
        return Rows(judge_scores(questions[:n], answers[:n], references[:n], url=cfg.url, model=cfg.model,
                                 api_key=key, timeout_s=cfg.timeout_s, rubric=cfg.rubric, progress=bar.update))


def latency(path: Path, prompts: list[str], cfg: EvaluateConfig, classifier: bool) -> dict[str, float]:
    """Seconds the candidate takes to answer one request (generate up to max_new_tokens, or classify one text),
    over the first evaluate.latency_probes prompts, after one warm-up request."""
    from ftcore.evaluation.classification import classify

    model, tokenizer = load_trained(path)
    probes = prompts[: cfg.latency_probes]
    if not probes:
        return {}

    def answer(prompt: str) -> None:
        if classifier:
            classify(model, tokenizer, [prompt])
        else:
            generate(model, tokenizer, [prompt], cfg.max_new_tokens, 1)

    answer(probes[0])  # the first call pays for lazy initialisation, which a running server has behind it
    seconds = []
    for prompt in probes:
        started = time.perf_counter()
        answer(prompt)
        seconds.append(time.perf_counter() - started)
    p50, p95 = np.percentile(seconds, [50, 95])
    return {"latency_p50_s": float(p50), "latency_p95_s": float(p95)}
