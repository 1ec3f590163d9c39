"""Serving for real traffic (issue 24): continuous batching against static batches, streaming's time to first token,
and many adapters on one base against one server per adapter, each in one invocation on this machine.

Models are built from config (no hub), `ftflow serve` runs in its own process on 127.0.0.1, and clients are a closed
loop (each sends its next request when its answer is in). Every request asks for a fixed length (`ignore_eos`), so
both servers do the same work: answers of 4 to 128 tokens, drawn once (seeded).

1. **continuous**: a Llama of ~100M parameters (`--hidden 768 --layers 12`); the mixed workload at 16 and 64 clients
   with `batching.continuous` true and false (max_batch_size 16 both); tokens/s and p50/p99 latency. Beside them, the
   model's own batched throughput without HTTP: the same requests through `DecodeBatch`, 16 rows kept full, in this
   process.
2. **streaming**: the same workload streamed at 16 clients: time to first token p50/p99 against the whole answer's.
3. **adapters**: a Llama of ~20M parameters and 16 LoRA versions of it (r 8, every linear layer) registered in a
   temporary registry; 1, 4 and 16 adapters on one base: the server's peak resident memory and tokens/s with requests
   spread over the adapters, against one server per adapter (each serving its version's merged weights): the memory
   of one, measured, times N, and for N = 4 the throughput of 4 such servers at once sharing the clients.

    python bench/serve_traffic.py [--suite continuous streaming adapters] [--requests 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import REPO, Phase, start_server

CLIENTS = (16, 64)


def build_model(root: Path, hidden: int, layers: int, heads: int) -> Path:
    """A scratch Llama with the demo's tokenizer (the demo recipe's init stage, resized); built once per root."""
    if (root / "init" / "base" / "config.json").is_file():
        return root / "init" / "base"
    from demo_model import DEMO_RECIPE

    from ftcore import jobs
    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import collect_stage
    from ftcore.models.init import init_stage
    from ftcore.pins import Pins
    from ftcore.recipe import load_recipe

    recipe = load_recipe(DEMO_RECIPE, [f"model.scratch.hidden_size={hidden}",
                                       f"model.scratch.intermediate_size={4 * hidden}",
                                       f"model.scratch.num_hidden_layers={layers}",
                                       f"model.scratch.num_attention_heads={heads}", "model.scratch.vocab_size=512"])
    pins = Pins(sources={})
    collected = collect_stage(jobs.collect_job(recipe, pins), root / "collect")
    dataset = clean_balance_stage(jobs.clean_job(recipe, collected), root / "clean")
    return init_stage(jobs.init_job(recipe, pins, dataset), root / "init").base_path


def workload(n: int, longest: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"Question {i}: " + "what does it mean " * rng.randint(1, 6),
             "max_tokens": rng.randint(4, longest), "temperature": 0, "ignore_eos": True} for i in range(n)]


async def closed_loop(url: str, bodies: list[dict], clients: int, name: str, stream: bool = False,
                      models: list[str] | None = None) -> tuple[Phase, list[float], int]:
    """(the phase, each request's time to its first token when streamed, tokens generated)."""
    queue: asyncio.Queue[tuple[int, dict]] = asyncio.Queue()
    for i, body in enumerate(bodies):
        queue.put_nowait((i, body | ({"model": models[i % len(models)]} if models else {})))
    latencies, first_tokens, tokens, failures = [], [], 0, 0
    started = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, failures
        while not queue.empty():
            _, body = queue.get_nowait()
            sent = time.perf_counter()
            if not stream:
                response = await http.post("/v1/completions", json=body)
                if response.status_code != 200:
                    failures += 1
                    continue
                tokens += response.json()["usage"]["completion_tokens"]
            else:
                first = None
                async with http.stream("POST", "/v1/completions", json=body | {
                        "stream": True, "stream_options": {"include_usage": True}}) as response:
                    async for line in response.aiter_lines():
                        if first is None and line.startswith("data: "):
                            first = time.perf_counter() - sent
                        if '"usage": {' in line:
                            tokens += json.loads(line.removeprefix("data: "))["usage"]["completion_tokens"]
                first_tokens.append(first)
            latencies.append(time.perf_counter() - sent)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return Phase(name, latencies, failures, time.perf_counter() - started), first_tokens, tokens


def served(model: Path, root: Path, name: str, settings: dict):
    """A started server (warmed with four short requests): (process, url)."""
    process, url = start_server(model, root, name, {"cache": {"max_entries": 0}, **settings})
    asyncio.run(closed_loop(url, workload(4, 4, seed=1), 4, "warm-up"))
    return process, url


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(process) -> None:
    process.terminate()
    process.wait(timeout=60)


def report(phase: Phase, tokens: int) -> str:
    return (f"{phase.name:<44} {len(phase.latencies):>4} ok {phase.failures:>2} failed  {tokens / phase.seconds:7.1f} "
            f"tokens/s  p50 {phase.percentile(0.5):6.2f} s  p99 {phase.percentile(0.99):6.2f} s")


def model_alone(model: Path, bodies: list[dict], rows: int) -> float:
    """Tokens/s of the model on the same requests without HTTP: DecodeBatch kept at `rows` rows, in this process."""
    from transformers import AutoTokenizer

    from ftcore.models.load import load_trained
    from ftcore.serving.decoding import DecodeBatch, Row

    loaded, _ = load_trained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    batch = DecodeBatch(loaded.eval(), tokenizer.pad_token_id or 0)
    waiting = [Row(key=i, prompt=tokenizer(b["prompt"], add_special_tokens=False)["input_ids"],
                   max_new_tokens=b["max_tokens"]) for i, b in enumerate(bodies)]
    tokens, started = 0, time.perf_counter()
    while waiting or len(batch):
        joining, waiting = waiting[:rows - len(batch)], waiting[rows - len(batch):]
        tokens += len(batch.join(joining)) + len(batch.step())
    return tokens / (time.perf_counter() - started)


def continuous_suite(root: Path, args) -> None:
    model = build_model(root / "mid", args.hidden, args.layers, args.heads)
    print(f"\n## continuous batching: {model} ({args.hidden} hidden, {args.layers} layers)")
    results = {}
    for clients in CLIENTS:
        bodies = workload(args.requests * clients // 16, 128)
        for continuous in (True, False):
            process, url = served(model, root, f"cont-{continuous}-{clients}",
                                  {"batching": {"continuous": continuous, "max_batch_size": 16}})
            try:
                name = f"{'continuous' if continuous else 'static'} batching, {clients} clients"
                phase, _, tokens = asyncio.run(closed_loop(url, bodies, clients, name))
            finally:
                stop(process)
            results[continuous, clients] = (phase, tokens)
            print(report(phase, tokens), flush=True)
        (on, on_tokens), (off, off_tokens) = results[True, clients], results[False, clients]
        print(f"  {clients} clients: continuous/static {on_tokens / on.seconds / (off_tokens / off.seconds):.2f}x "
              f"tokens/s; p99 {on.percentile(0.99):.2f} s vs {off.percentile(0.99):.2f} s")
    alone = model_alone(model, workload(args.requests, 128), 16)
    on, on_tokens = results[True, 16]
    print(f"model alone (DecodeBatch, 16 rows, no HTTP): {alone:.1f} tokens/s; the server at 16 clients: "
          f"{on_tokens / on.seconds / alone:.2f}x of it")


def streaming_suite(root: Path, args) -> None:
    model = build_model(root / "mid", args.hidden, args.layers, args.heads)
    print(f"\n## streaming: {model}")
    bodies = workload(args.requests, 128)
    process, url = served(model, root, "stream", {})
    try:
        phase, first, tokens = asyncio.run(closed_loop(url, bodies, 16, "streamed, 16 clients", stream=True))
    finally:
        stop(process)
    first_phase = Phase("first token", first, 0, 1)
    print(report(phase, tokens))
    print(f"time to first token p50 {first_phase.percentile(0.5):.2f} s, p99 {first_phase.percentile(0.99):.2f} s; "
          f"whole answer p50 {phase.percentile(0.5):.2f} s, p99 {phase.percentile(0.99):.2f} s")


def adapter_versions(base: Path, root: Path, count: int) -> list[str]:
    """`count` LoRA versions of `base` registered as models a0, a1, ...: their URIs."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftcore import tracking, versions

    uris = []
    for i in range(count):
        torch.manual_seed(i)
        folder = root / f"a{i}"
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"))
        peft.save_pretrained(folder / "trained_adapter")
        peft.merge_and_unload().save_pretrained(folder, safe_serialization=True)
        for file in base.iterdir():
            if file.is_file() and not file.name.startswith(("model", "config", "generation_config")):
                shutil.copy2(file, folder / file.name)
        run = tracking.start_pipeline_run("bench-adapters", f"a{i}", {"name": f"a{i}"}, {})
        uris.append(f"models:/a{i}/{versions.register_version(run, f'a{i}', folder, tags={})}")
    return uris


def adapters_suite(root: Path, args) -> None:
    base = build_model(root / "small", args.adapter_hidden, 6, 8)
    uris = adapter_versions(base, root / "versions", 16)
    bodies = workload(args.requests, 64)
    print(f"\n## adapters: base {base} ({args.adapter_hidden} hidden, 6 layers), LoRA r 8 on every linear layer")
    process, url = served(base, root, "base-only", {})
    try:
        phase, _, tokens = asyncio.run(closed_loop(url, bodies, 16, "base alone, no adapter"))
        print(report(phase, tokens) + f"  peak RSS {peak_rss_mb(process.pid):.0f} MB")
    finally:
        stop(process)
    for count in (1, 4, 16):
        names = [f"a{i}" for i in range(count)]
        settings = {"adapters": {"serve": dict(zip(names, uris, strict=False)), "max_loaded": 16}}
        process, url = served(base, root, f"adapters-{count}", settings)
        try:
            phase, _, tokens = asyncio.run(closed_loop(url, bodies, 16, f"{count} adapters on one base, mixed",
                                                       models=names))
            print(report(phase, tokens) + f"  peak RSS {peak_rss_mb(process.pid):.0f} MB")
        finally:
            stop(process)
    from ftcore.models.registered import model_folder, pin_reference

    folders = [model_folder(pin_reference(uri, "bench")) for uri in uris[:4]]
    servers = [served(folder, root, f"alone-{i}", {}) for i, folder in enumerate(folders)]
    try:
        async def each_its_own():
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(closed_loop(url, bodies[i::4], 4, f"a{i}")
                                              for i, (_, url) in enumerate(servers)))
            return time.perf_counter() - started, sum(tokens for _, _, tokens in outcomes), outcomes

        seconds, tokens, outcomes = asyncio.run(each_its_own())
        latencies = [latency for phase, _, _ in outcomes for latency in phase.latencies]
        together = Phase("4 servers, one adapter each, 4 clients each", latencies, 0, seconds)
        rss = [peak_rss_mb(process.pid) for process, _ in servers]
        print(report(together, tokens) + f"  peak RSS {sum(rss):.0f} MB in all ({rss[0]:.0f} MB each)")
        print(f"one server per adapter: {rss[0]:.0f} MB each: 4 adapters {4 * rss[0]:.0f} MB, 16 adapters "
              f"{16 * rss[0]:.0f} MB (one measured, times N)")
    finally:
        for process, _ in servers:
            stop(process)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", nargs="+", default=["continuous", "streaming", "adapters"],
                        choices=["continuous", "streaming", "adapters"])
    parser.add_argument("--requests", type=int, default=64, help="at 16 clients (4x as many at 64)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--adapter-hidden", type=int, default=512, help="the adapters suite's base (6 layers)")
    args = parser.parse_args()
    os.environ.setdefault("FTFLOW_HOME", tempfile.mkdtemp(prefix="ftflow-bench-traffic-"))
    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-traffic-"))
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; repo {REPO}")
    suites = {"continuous": continuous_suite, "streaming": streaming_suite, "adapters": adapters_suite}
    for name in args.suite:
        suites[name](root, args)


if __name__ == "__main__":
    main()
