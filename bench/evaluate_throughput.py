"""The evaluate stage's speed: 1,000 test examples through the tiny demo model, generated in batches versus one
at a time, in one invocation.

The clinical demo recipe is trained (library calls, no Prefect), its train split repeated to 1,000 examples is the
test set. Prints examples/s of batched greedy generation (evaluate.batch_size) and of one request at a time (on
the first `--single` examples, enough for a stable rate), their ratio, and the wall-clock of the whole evaluate
stage on the 1,000 examples (generation, the seven text metrics, perplexity and 1,000-resample bootstrap
intervals). Run with `make bench-evaluate`; record the figures in docs/benchmarks.md.

    python bench/evaluate_throughput.py [--examples 1000] [--single 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="examples generated one at a time")
    args = parser.parse_args()
    os.environ.setdefault("FTFLOW_HOME", tempfile.mkdtemp(prefix="ftflow-bench-evaluate-"))
    from demo_model import train_demo

    from ftcore.evaluation.evaluate import evaluate_models
    from ftcore.evaluation.language import eval_examples
    from ftcore.evaluation.scorers import Scoring
    from ftcore.models.generate import generate
    from ftcore.models.load import load_trained

    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-evaluate-"))
    # Every metric of the objective (the demo recipe lists three).
    recipe, dataset, trained = train_demo(root, ["evaluate.metrics=null"])
    rows = pd.read_parquet(dataset.splits["train"])
    test = pd.concat([rows] * (args.examples // len(rows) + 1), ignore_index=True).iloc[: args.examples]
    test.to_parquet(root / "test.parquet", index=False)

    model, tokenizer = load_trained(trained.model_path)
    prompts = eval_examples(test, tokenizer)["prompt"].tolist()
    cfg = recipe.evaluate
    started = time.perf_counter()
    generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    batched = len(prompts) / (time.perf_counter() - started)
    started = time.perf_counter()
    generate(model, tokenizer, prompts[: args.single], cfg.max_new_tokens, 1)
    single = args.single / (time.perf_counter() - started)

    started = time.perf_counter()
    scoring = Scoring(splits={'test': root / 'test.parquet'}, evaluate=cfg)
    out = evaluate_models({"candidate": trained.model_path}, scoring, root / "evaluate")
    stage = time.perf_counter() - started

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch threads {__import__('torch').get_num_threads()}")
    print(f"greedy generation, batch {cfg.batch_size}: {batched:.1f} examples/s; one at a time: {single:.1f} "
          f"examples/s; ratio {batched / single:.2f}x")
    print(f"evaluate stage on {len(test)} examples ({len(cfg.metrics)} metrics, {cfg.bootstrap_resamples} bootstrap "
          f"resamples): {stage:.1f} s; exact match {out.metrics['exact_match']:.3f} "
          f"[{out.metrics['exact_match.ci_low']:.3f}, {out.metrics['exact_match.ci_high']:.3f}]")


if __name__ == "__main__":
    main()
