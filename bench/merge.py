"""Merging two adapters trained on different tasks (docs/merging.md), measured in one invocation.

A base is built from config (a Llama with a tokenizer trained on both tasks' text) and saved as a model folder, the
way a downloaded base is used. On it: an adapter per task (the sources, registered), and a multitask adapter trained
on the union of the two sources' train splits (the alternative to merging). Then one `merge:` run per combination,
registered under the multitask adapter's name so that the evaluate stage scores, on the same test rows (each
source's own test split), the merge, both sources and the multitask adapter (as `champion`). The gate's
beat_champion margin is set out of reach, so the multitask adapter stays champion for every combination.

Prints, per task and model, the metric on that task's test rows with its 95% bootstrap interval.

    python bench/merge.py --pair abbreviations           (`make bench-merge`: the demo's two halves)
    python bench/merge.py --pair spam-qtype               (SMS spam and MedQuAD question types, from ../shared/data)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data_recipes" / "demo"
SHARED = REPO.parent / "shared" / "data"
COMBINATIONS = {
    "linear": {"combination": "linear"},
    "cat": {"combination": "cat"},
    "svd": {"combination": "svd"},
    "ties 0.5": {"combination": "ties", "density": 0.5},
    "dare_linear 0.5": {"combination": "dare_linear", "density": 0.5},
    "dare_ties 0.5": {"combination": "dare_ties", "density": 0.5},
    "linear, weights 0.5": {"combination": "linear", "weights": [0.5, 0.5]},
    "cat, weights 0.5": {"combination": "cat", "weights": [0.5, 0.5]},
}


def abbreviation_sources() -> dict[str, dict]:
    """The continual-learning demo's halves: disjoint sets of clinical abbreviations, answered in words."""
    return {half: {"type": "jsonl", "path": str(DEMO / f"clinical_abbrev_{half}.jsonl"),
                   "columns": {"prompt": "question", "completion": "answer"}} for half in ("a", "b")}


def spam_qtype_sources() -> dict[str, dict]:
    """SMS spam (answer spam or ham) and MedQuAD's question types (answer e.g. symptoms, treatment)."""
    return {"spam": {"type": "csv", "path": str(SHARED / "sms_spam_collection.tsv"), "delimiter": "\t",
                     "header": False, "quotechar": None, "columns": {"prompt": "1", "completion": "0"}},
            "qtype": {"type": "jsonl", "path": str(SHARED / "medquad_sample_every16.jsonl"),
                      "columns": {"prompt": "question", "completion": "qtype"}}}


PAIRS = {
    # the data sources, the metrics (the first is the gate's), and every adapter's training (sources and multitask)
    "abbreviations": (abbreviation_sources, ["exact_match", "perplexity"],
                      {"train": {"epochs": 15, "batch_size": 8, "learning_rate": 5.0e-3}}),
    "spam-qtype": (spam_qtype_sources, ["exact_match", "perplexity"],
                   {"train": {"max_steps": 300, "batch_size": 16, "learning_rate": 2.0e-3, "max_length": 192}}),
}
EVALUATE = {"max_new_tokens": 8}
QUICK = ["monitor.probe_size=2", "stages.retry_delay_s=0", "deploy.exports=[]"]


def build_base(folder: Path, sources: dict[str, dict]) -> Path:
    import pandas as pd

    from ftcore.data.sources import read_source
    from ftcore.data.sources.config import FileSource
    from ftcore.models.config import ScratchModelConfig
    from ftcore.models.scratch import build_model, train_tokenizer

    texts = []
    for spec in sources.values():
        source = FileSource.model_validate(spec)
        for chunk in read_source(source, 10_000):
            rows = pd.DataFrame({c: chunk.rows[spec["columns"][c]].astype(str) for c in ("prompt", "completion")})
            texts += [f"Question: {p}\nAnswer: {c}" for p, c in zip(rows.prompt, rows.completion, strict=True)]
    cfg = ScratchModelConfig()
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg)
    build_model(cfg, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write(folder: Path, name: str, recipe: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **recipe}))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=PAIRS, default="abbreviations")
    parser.add_argument("--combinations", nargs="*", choices=COMBINATIONS, default=list(COMBINATIONS))
    parser.add_argument("--test-share", type=float, default=0.2, help="each source's test split")
    args = parser.parse_args()
    os.environ["FTFLOW_HOME"] = home = tempfile.mkdtemp(prefix="ftflow-bench-merge-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from flows.settings import configure_environment

    configure_environment()
    from flows.finetune import finetune

    make_sources, metrics, settings = PAIRS[args.pair]
    sources = make_sources()
    folder = Path(home)
    base = build_base(folder / "base", sources)
    common = {"model": {"source": "pretrained", "name_or_path": str(base)}, "method": {"name": "lora", "r": 8},
              "evaluate": {**EVALUATE, "metrics": metrics}, **settings}
    started = time.time()
    for task, source in sources.items():
        finetune(write(folder, f"source-{task}", {**common, "data": {"sources": [source], "split": {
            "validation": 0.1, "test": args.test_share, "seed": 0}}}), QUICK)
    uris = [f"models:/source-{task}/1" for task in sources]
    tasks = {uri: f"source-{task}" for uri, task in zip(uris, sources, strict=True)}
    # The alternative to merging: one adapter trained on both sources' train splits, scored on their test splits.
    union = {"sources": [{"type": "registered", "model": u, "split": "train", "task": t} for u, t in tasks.items()],
             "test_sources": [{"type": "registered", "model": u, "split": "test", "task": t} for u, t in tasks.items()],
             "tasks": {t: {} for t in tasks.values()}, "prompt_template": "{prompt}",
             "completion_template": "{completion}"}
    finetune(write(folder, "merged", {**common, "objective": "multitask", "data": union, "clean": {"steps": []}}),
             QUICK)
    trained_s = time.time() - started
    results = {}
    for name in args.combinations:
        summary = finetune(write(folder, "merged", {
            "merge": {"sources": uris, **COMBINATIONS[name]}, "evaluate": {**EVALUATE, "metrics": metrics},
            "deploy": {"gate": [{"rule": "beat_champion", "margin": 1.0}, {"rule": "keep_sources", "share": 0.9}]}}),
            QUICK)
        results[name] = summary["stages"]["evaluate"]["metrics"]
        assert summary["model"]["aliases"] == ["challenger"], summary["model"]  # the multitask adapter stays champion
    for metric in metrics:
        report(results, tasks, metric, args.pair, trained_s)


def report(results: dict[str, dict], tasks: dict[str, str], metric: str, pair: str, trained_s: float) -> None:
    def cell(m: dict, key: str) -> str:
        return f"{m[key]:.3f} [{m[key + '.ci_low']:.3f}, {m[key + '.ci_high']:.3f}]"

    first = next(iter(results.values()))
    print(f"\npair {pair}; {metric} on each task's test rows ({int(first['test_rows'])} in all), 95% bootstrap "
          f"intervals; machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"sources and multitask adapter trained in {trained_s:.0f} s")
    names = list(tasks.values())
    print("| model | " + " | ".join(names) + " | mean |")
    print("|---|" + "---|" * (len(names) + 1))
    fixed = {"base": "base.", **{f"source {t}": f"source_{t}." for t in names}, "multitask adapter": "champion."}
    for label, prefix in fixed.items():
        values = [first[f"{prefix}{metric}.{t}"] for t in names]
        print(f"| {label} | " + " | ".join(cell(first, f"{prefix}{metric}.{t}") for t in names)
              + f" | {sum(values) / len(values):.3f} |")
    for name, m in results.items():
        values = [m[f"{metric}.{t}"] for t in names]
        print(f"| merge: {name} | " + " | ".join(cell(m, f"{metric}.{t}") for t in names)
              + f" | {sum(values) / len(values):.3f} |")


if __name__ == "__main__":
    main()
