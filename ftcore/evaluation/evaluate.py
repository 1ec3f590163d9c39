"""evaluate stage: the same test questions through the base model and the fine-tuned candidate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftcore.config import EvaluateConfig
from ftcore.evaluation.generate import completion_nll, generate
from ftcore.evaluation.metrics import exact_match, perplexity, token_f1
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir
from ftcore.models.load import load_trained
from ftcore.outputs import EvalOutput

GENERATION_METRICS = {"exact_match": exact_match, "token_f1": token_f1}


def evaluate_models(models: dict[str, Path], test_split: Path, cfg: EvaluateConfig, out_dir: Path) -> EvalOutput:
    """Score each named model folder (e.g. base, candidate) on the test split. Metrics are `<model>.<metric>`."""
    test = pd.read_parquet(test_split)
    metrics: dict[str, float] = {"test_rows": len(test)}
    predictions = test[["raw_prompt", "raw_completion"]].copy()
    for name, path in models.items():
        scores, outputs = score_model(path, test, cfg)
        metrics.update({f"{name}.{k}": v for k, v in scores.items()})
        if outputs is not None:
            predictions[name] = outputs
    with atomic_dir(out_dir) as tmp:
        predictions.to_json(tmp / "predictions.jsonl", orient="records", lines=True, force_ascii=False)
    return EvalOutput(
        path=out_dir,
        content_hash=hash_dir(out_dir),
        predictions_path=out_dir / "predictions.jsonl",
        metrics=metrics,
        artifacts={"predictions": out_dir / "predictions.jsonl"},
    )


def score_model(path: Path, test: pd.DataFrame, cfg: EvaluateConfig) -> tuple[dict[str, float], list[str] | None]:
    model, tokenizer = load_trained(path)
    scores: dict[str, float] = {}
    outputs = None
    wanted = [m for m in cfg.metrics if m in GENERATION_METRICS]
    if wanted:
        outputs = [
            o.strip()
            for o in generate(model, tokenizer, test["prompt"].tolist(), cfg.max_new_tokens, cfg.batch_size)
        ]
        for metric in wanted:
            fn = GENERATION_METRICS[metric]
            scores[metric] = sum(map(fn, outputs, test["raw_completion"])) / len(test)
    if "perplexity" in cfg.metrics:
        nll, n = completion_nll(model, tokenizer, test["prompt"].tolist(), test["completion"].tolist(), cfg.batch_size)
        scores["perplexity"] = perplexity(nll, n)
    return scores, outputs
