"""The GGUF exports run by llama.cpp itself (llama-cpp-python), against the PyTorch model they were written from:
greedy answers to the demo version's test prompts, the file's tokenizer as llama.cpp reads it, and generation speed
(tokens per second, one prompt at a time, on the same CPU threads).

llama-cpp-python is not one of ftflow's dependencies: it is a source build (llama.cpp compiled on install). `make
bench-llama-cpp` installs it into .venv first (its build time is printed) and runs this. Record the figures in
docs/benchmarks.md.

    python bench/gguf_llama_cpp.py [--max-new-tokens 16]   (not llama_cpp.py: that name would shadow the package)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ["gguf_f16", "gguf_q8_0", "gguf_q4_0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("error: llama_cpp is not installed; run `make bench-llama-cpp` (it builds llama-cpp-python)")
    os.environ["FTFLOW_HOME"] = home = tempfile.mkdtemp(prefix="ftflow-bench-llama-cpp-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from flows.settings import configure_environment

    configure_environment()
    import torch

    from flows.finetune import finetune
    from ftcore.deploy.export import export_registered, fetch_export, gguf_file, version_test_split
    from ftcore.models.generate import stop_token_ids
    from ftcore.models.load import load_trained
    from ftcore.models.registered import model_folder, pin_reference
    from ftcore.versions import version_run_id

    summary = finetune(str(REPO / "data_recipes" / "recipes" / "clinical_qa.yaml"),
                       ["monitor.probe_size=2", "deploy.exports=[]"])
    ref = pin_reference(summary["model"]["uri"], "bench")
    export_registered(ref, KINDS, tolerance=0.05)
    prompts = version_test_split(version_run_id(str(ref.name), str(ref.version)))["prompt"].tolist()
    model, tokenizer = load_trained(model_folder(ref))
    stops = stop_token_ids(model, tokenizer)
    threads = torch.get_num_threads()

    def pytorch_answer(prompt: str) -> tuple[list[int], float]:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)
        return [t for t in out[0, ids.shape[1]:].tolist() if t not in stops], time.perf_counter() - started

    results = {"pytorch (float32)": [pytorch_answer(p) for p in prompts]}
    tokenized = {}
    for kind in KINDS:
        path = gguf_file(fetch_export(str(ref.name), str(ref.version), kind, Path(home) / kind))
        llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=threads, verbose=False)

        def cpp_answer(prompt: str, llm=llm) -> tuple[list[int], float]:
            tokens = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # the same ids as PyTorch's
            started = time.perf_counter()
            generated = []
            for token in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
                if token in stops or len(generated) == args.max_new_tokens:
                    break
                generated.append(token)
            return generated, time.perf_counter() - started

        results[f"llama.cpp ({kind})"] = [cpp_answer(p) for p in prompts]
        # The file's own tokenizer, as llama.cpp reads it, against the model's.
        tokenized[kind] = sum(llm.tokenize(p.encode(), add_bos=False, special=True)
                              == tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts)

    reference = [tokens for tokens, _ in results["pytorch (float32)"]]
    print(f"\n{summary['model']['uri']}: {len(prompts)} test prompts, greedy, up to {args.max_new_tokens} new tokens, "
          f"one prompt at a time; machine: {platform.machine()}, {os.cpu_count()} cores, {threads} threads, "
          f"llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}")
    print("| engine | answers identical to PyTorch's | tokens generated | seconds | tokens/s |")
    print("|---|---|---|---|---|")
    for name, answers in results.items():
        same = sum(tokens == want for (tokens, _), want in zip(answers, reference, strict=True))
        count, seconds = sum(len(t) for t, _ in answers), sum(s for _, s in answers)
        print(f"| {name} | {same}/{len(answers)} | {count} | {seconds:.2f} | {count / seconds:.0f} |")
    print("llama.cpp's own tokenization of the prompts, the same ids as the model's tokenizer: "
          + ", ".join(f"{kind} {n}/{len(prompts)}" for kind, n in tokenized.items()))


if __name__ == "__main__":
    main()
