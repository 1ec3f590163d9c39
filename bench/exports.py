"""Every export of the demo's version, measured in one invocation: weight files against the float32 and bf16 exports,
agreement with the float32 model (GGUF read back by transformers, ONNX run by ONNX Runtime), and for ONNX the CPU
latency against PyTorch's on the same prompts: one forward pass of a batch, and greedy answers (PyTorch with its
key/value cache, the ONNX graph without one).

Trains the demo (`data_recipes/recipes/clinical_qa.yaml`) in a fresh FTFLOW_HOME, then exports it as `ftflow export`
does. Run with `make bench-exports`; record the figures in docs/benchmarks.md.

    python bench/exports.py [--prompts 32] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ["merged", "merged_bf16", "int8", "gguf_f16", "gguf_q8_0", "gguf_q4_0", "onnx"]
REPEATS = 5


def timed(fn) -> float:
    """The median seconds of `fn()` over REPEATS runs, after one untimed."""
    fn()
    seconds = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="test prompts timed (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    os.environ["FTFLOW_HOME"] = tempfile.mkdtemp(prefix="ftflow-bench-exports-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from flows.settings import configure_environment

    configure_environment()
    import torch

    from flows.finetune import finetune
    from ftcore.deploy.export import export_registered, fetch_export, load_export, version_test_split
    from ftcore.deploy.onnx_export import forward_seconds
    from ftcore.models.generate import generate
    from ftcore.models.load import load_trained
    from ftcore.models.registered import model_folder, pin_reference
    from ftcore.versions import version_run_id

    summary = finetune(str(REPO / "data_recipes" / "recipes" / "clinical_qa.yaml"),
                       ["monitor.probe_size=2", "deploy.exports=[]"])
    uri = summary["model"]["uri"]
    ref = pin_reference(uri, "bench")
    started = time.perf_counter()
    report = export_registered(ref, KINDS, tolerance=0.05)
    export_s = time.perf_counter() - started

    test = version_test_split(version_run_id(str(ref.name), str(ref.version)))
    prompts = test["prompt"].head(args.prompts).tolist()
    pytorch, tokenizer = load_trained(model_folder(ref))
    onnx, onnx_tokenizer = load_export(fetch_export(str(ref.name), str(ref.version), "onnx",
                                                    Path(os.environ["FTFLOW_HOME"]) / "onnx"))
    answers = {name: generate(model, tok, prompts, args.max_new_tokens, len(prompts))
               for name, (model, tok) in {"pytorch": (pytorch, tokenizer), "onnx": (onnx, onnx_tokenizer)}.items()}
    latency = {
        "forward": {name: forward_seconds(model, tokenizer, prompts) for name, model in (("pytorch", pytorch),
                                                                                        ("onnx", onnx))},
        "greedy": {name: timed(lambda m=model, t=tok: generate(m, t, prompts, args.max_new_tokens, len(prompts)))
                   for name, (model, tok) in (("pytorch", (pytorch, tokenizer)), ("onnx", (onnx, onnx_tokenizer)))},
    }

    print(f"\n{uri}; machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(KINDS)} exports made in {export_s:.1f} s")
    float32 = report.exports["merged"].bytes
    print("| kind | weight files | of float32 | check |")
    print("|---|---|---|---|")
    for kind, record in report.exports.items():
        check = report.verdicts().get(kind, "")
        print(f"| {kind} | {record.bytes / 2**20:.2f} MB | {record.bytes / float32:.1%} | {check} |")
    same = sum(a == b for a, b in zip(answers["pytorch"], answers["onnx"], strict=True))
    print(f"\n{len(prompts)} test prompts as one batch; greedy answers up to {args.max_new_tokens} tokens: "
          f"{same}/{len(prompts)} the same in both")
    print("| engine | forward pass (median of 5) | greedy answers (median of 5) |")
    print("|---|---|---|")
    for name in ("pytorch", "onnx"):
        print(f"| {name} | {latency['forward'][name] * 1000:.2f} ms | {latency['greedy'][name] * 1000:.1f} ms |")
    print(f"onnx / pytorch: forward {latency['forward']['onnx'] / latency['forward']['pytorch']:.2f}x, greedy "
          f"{latency['greedy']['onnx'] / latency['greedy']['pytorch']:.2f}x")


if __name__ == "__main__":
    main()
