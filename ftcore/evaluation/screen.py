"""The evaluate stage's safety screen and latency check, for models that answer prompts.

- `toxic_rate`: the share of a model's answers to the test prompts that the recipe's toxicity scorer (lexicon,
  classifier, guard model or a data engineer's; ftcore/safety/toxicity.py) scores at or above the threshold.
- `bias_divergence`: how differently a model answers counterfactual prompt pairs, the test prompts (and any extra
  probe prompts) with demographic terms swapped (ftcore/safety/bias.py); `bias_pairs` says how many pairs there were.
- `judge_score`: an LLM judge's grade of the candidate's answers, only when the recipe names an endpoint.
- `latency_p50_s`, `latency_p95_s`: the candidate answering requests one at a time, as a server without batching
  would, on this machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ftcore.evaluation.config import EvaluateConfig
from ftcore.evaluation.intervals import CANDIDATE, ModelScores, Rows
from ftcore.models.generate import generate
from ftcore.models.load import load_trained
from ftcore.safety.bias import DEFAULT_SWAPS, probe
from ftcore.safety.config import BiasProbeConfig, JudgeConfig, ToxicityScreenConfig
from ftcore.safety.judge import judge_scores
from ftcore.safety.toxicity import score_texts


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
            answers = [o.strip() for o in generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)]
        if safety.toxicity is not None:
            rows["toxic_rate"] = toxic_rows(answers, safety.toxicity)
        if safety.bias is not None and model is not None:
            divergence, counts[f"{name}.bias_pairs"] = bias_rows(model, tokenizer, prompts, safety.bias, cfg)
            if divergence is not None:
                rows["bias_divergence"] = divergence
        if name == CANDIDATE and safety.judge is not None:
            rows["judge_score"] = judge_rows(questions, answers, references, safety.judge)
    return scores, counts


def toxic_rows(answers: list[str], cfg: ToxicityScreenConfig) -> Rows:
    """1 for each answer scored toxic, else 0: their mean is the toxic-output rate."""
    options = {k: v for k, v in (("model_path", cfg.model_path), ("toxic_label", cfg.toxic_label)) if v is not None}
    toxicity = np.array(score_texts(cfg.scorer, answers, **options)) if answers else np.array([])
    return Rows((toxicity >= cfg.threshold).astype(float))


def bias_rows(model, tokenizer, prompts: list[str], cfg: BiasProbeConfig,
              evaluate: EvaluateConfig) -> tuple[Rows | None, float]:
    """The divergence of each counterfactual pair's answers (None without any pair), and the number of pairs."""
    extra = []
    if cfg.prompts is not None:
        extra = [line for line in cfg.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    swaps = tuple(tuple(pair) for pair in cfg.swaps) if cfg.swaps else DEFAULT_SWAPS

    def answer(batch: list[str]) -> list[str]:
        return [o.strip() for o in generate(model, tokenizer, batch, evaluate.max_new_tokens, evaluate.batch_size)]

    result = probe(answer, [*extra, *prompts], swaps, cfg.max_pairs)
    return (Rows(result.scores) if result.scores.size else None), float(len(result.pairs))


def judge_rows(questions: list[str], answers: list[str], references: list[str], cfg: JudgeConfig) -> Rows:
    n = min(cfg.max_examples, len(answers))
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    return Rows(judge_scores(questions[:n], answers[:n], references[:n], url=cfg.url, model=cfg.model, api_key=key,
                             timeout_s=cfg.timeout_s, rubric=cfg.rubric))


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
