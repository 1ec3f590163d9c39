"""Serving for real traffic (issue 24): continuous batching against static batches, streaming's time to first token,
and many adapters on one base against one server per adapter, each in one invocation on this machine.

Models are built from config (no hub), `ftflow serve` runs in its own process on 127.0.0.1, and clients are a closed
loop (each sends its next request when its answer is in). Every request asks for a fixed length (`ignore_eos`), so
both servers do the same work: answers of 4 to 128 tokens, drawn once (seeded).

0. **step**: one decode step of 16 rows of the continuous suite's model with the decode batch's cache layers (spare
   columns, written in place) against transformers' DynamicLayer (a concatenation per step), in this process.
1. **continuous**: a Llama of ~100M parameters (`--hidden 768 --layers 12`); the mixed workload at 16 and 64 clients
   with `batching.continuous` true and false (max_batch_size 16 both); tokens/s and p50/p99 latency. Beside them, the
   model's own batched throughput without HTTP: the same requests through `DecodeBatch`, 16 rows kept full, in this
   process.
2. **streaming**: the same workload streamed at 16 clients: time to first token p50/p99 against the whole answer's.
3. **adapters**: a Llama of ~20M parameters and 16 LoRA versions of it (r 8, every linear layer) registered in a
   temporary registry; 1, 4 and 16 adapters on one base: the server's peak resident memory and tokens/s with requests
   spread over the adapters, against one server per adapter (each serving its version's merged weights): the memory
   of one, measured, times N, and for N = 4 the throughput of 4 such servers at once sharing the clients. And, in
   this process without HTTP, 4 adapters' requests in one mixed batch of 16 rows against one batch of 4 rows per
   adapter stepped in turn (what per-adapter queues would do).

    python bench/serve_traffic.py [--suite step continuous streaming adapters] [--requests 64] [--clients 16 64]\
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import REPO, Phase, start_server


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

    loaded, _ = load_trained(model)
    return decode_rate(loaded.eval(), [rows_of(AutoTokenizer.from_pretrained(model), bodies)], rows)


def rows_of(tokenizer, bodies: list[dict], adapters: list[str] | None = None) -> list:
    from ftcore.serving.decoding import Row

    return [Row(key=i, prompt=tokenizer(b["prompt"], add_special_tokens=False)["input_ids"],
                max_new_tokens=b["max_tokens"], adapter=adapters[i % len(adapters)] if adapters else None)
            for i, b in enumerate(bodies)]


def decode_rate(model, queues: list[list], rows_each: int) -> float:
    """Tokens/s of one DecodeBatch per queue of rows, each kept at `rows_each` rows from its queue, stepped in
    turn (as a server with one queue per adapter would), in this process."""
    from ftcore.serving.decoding import DecodeBatch

    queues = [list(q) for q in queues]
    batches = [DecodeBatch(model) for _ in queues]
    tokens, started = 0, time.perf_counter()
    while any(queues) or any(len(b) for b in batches):
        for batch, waiting in zip(batches, queues, strict=True):
            joining = waiting[:rows_each - len(batch)]
            del waiting[:len(joining)]
            tokens += len(batch.join(joining)) + len(batch.step())
    return tokens / (time.perf_counter() - started)


def mixed_against_queues(base: Path, uris: list[str], bodies: list[dict]) -> tuple[float, float]:
    """Tokens/s of 4 adapters' requests sharing one batch of 16 rows (PEFT's mixed-batch routing), against one batch
    of 4 rows per adapter (per-adapter queues), on one base in this process."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ftcore.models.load import load_trained
    from ftcore.models.registered import model_folder, pin_reference

    model, names = load_trained(base)[0].eval(), [f"a{i}" for i in range(4)]
    for name, uri in zip(names, uris, strict=False):
        adapter = str(model_folder(pin_reference(uri, "bench")) / "trained_adapter")
        if isinstance(model, PeftModel):
            model.load_adapter(adapter, adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, adapter, adapter_name=name).eval()
    rows = rows_of(AutoTokenizer.from_pretrained(base), bodies, names)
    mixed = decode_rate(model, [rows], 16)
    rows = rows_of(AutoTokenizer.from_pretrained(base), bodies, names)  # fresh rows: a Row keeps its tokens
    return mixed, decode_rate(model, [[r for r in rows if r.adapter == n] for n in names], 4)


def continuous_suite(root: Path, args) -> None:
    """Continuous against static batching at each load, `--repeats` times in alternating order (ABBA...: this VM's
    speed drifts between minutes), then the medians; and the model alone at 16 rows."""
    model = build_model(root / "mid", args.hidden, args.layers, args.heads)
    print(f"\n## continuous batching: {model} ({args.hidden} hidden, {args.layers} layers)")
    medians = {}  # clients -> continuous tokens/s
    for clients in args.clients:
        bodies = workload(args.requests * clients // 16, 128)
        rates, p99s = {True: [], False: []}, {True: [], False: []}
        for repeat in range(args.repeats):
            for continuous in (True, False) if repeat % 2 == 0 else (False, True):
                process, url = served(model, root, f"cont-{continuous}-{clients}-{repeat}",
                                      {"batching": {"continuous": continuous, "max_batch_size": 16}})
                try:
                    name = f"{'continuous' if continuous else 'static'} batching, {clients} clients"
                    phase, _, tokens = asyncio.run(closed_loop(url, bodies, clients, name))
                finally:
                    stop(process)
                rates[continuous].append(tokens / phase.seconds)
                p99s[continuous].append(phase.percentile(0.99))
                print(report(phase, tokens), flush=True)
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        print(f"  {clients} clients, medians of {args.repeats}: continuous {on:.1f} vs static {off:.1f} tokens/s = "
              f"{on / off:.2f}x; p99 {statistics.median(p99s[True]):.2f} s vs {statistics.median(p99s[False]):.2f} s",
              flush=True)
        medians[clients] = on
    runs = [model_alone(model, workload(args.requests, 128), 16) for _ in range(args.repeats)]
    alone = statistics.median(runs)
    print(f"model alone (DecodeBatch, 16 rows, no HTTP): {alone:.1f} tokens/s (median; runs "
          f"{', '.join(f'{r:.1f}' for r in runs)}); the server at {args.clients[0]} clients (median): "
          f"{medians[args.clients[0]] / alone:.2f}x of it")


def step_suite(root: Path, args) -> None:
    """A decode step of 16 rows with the decode batch's cache (kv_cache.SpareLayer: a step writes its column in
    place) against transformers' DynamicLayer (a step concatenates the whole cache): 200 steps from 16 prompts,
    alternating three times, in this process."""
    from transformers import AutoTokenizer, DynamicCache

    from ftcore.models.load import load_trained
    from ftcore.serving.decoding import DecodeBatch

    model = build_model(root / "mid", args.hidden, args.layers, args.heads)
    loaded, tokenizer = load_trained(model)[0].eval(), AutoTokenizer.from_pretrained(model)
    print(f"\n## decode step, 16 rows: {model}")
    times: dict[str, list[float]] = {"spare columns": [], "DynamicLayer": []}
    for _ in range(3):
        for kind, ms in times.items():
            batch = DecodeBatch(loaded)
            if kind == "DynamicLayer":
                batch._empty_cache = lambda: DynamicCache(config=loaded.config)
            batch.join([replace(r, max_new_tokens=1000) for r in rows_of(tokenizer, workload(16, 128))])
            started = time.perf_counter()
            for _ in range(200):
                batch.step()
            ms.append((time.perf_counter() - started) / 200 * 1000)
    for kind, ms in times.items():
        print(f"{kind:<14} {statistics.median(ms):6.1f} ms a step (median; runs {', '.join(f'{m:.1f}' for m in ms)})")
    spare, dynamic = (statistics.median(times[k]) for k in ("spare columns", "DynamicLayer"))
    print(f"a step with DynamicLayer takes {dynamic / spare:.2f}x the time with spare columns")


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
    mixed, queued = mixed_against_queues(base, uris, bodies)
    print(f"4 adapters, no HTTP: one mixed batch of 16 rows {mixed:.1f} tokens/s; one batch of 4 rows per adapter "
          f"(per-adapter queues) {queued:.1f} tokens/s: {mixed / queued:.2f}x")
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
    parser.add_argument("--suite", nargs="+", default=["step", "continuous", "streaming", "adapters"],
                        choices=["step", "continuous", "streaming", "adapters"])
    parser.add_argument("--requests", type=int, default=64, help="at 16 clients (4x as many at 64)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="the continuous suite's loads")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each batching at each load (continuous suite)")
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
    suites = {"step": step_suite, "continuous": continuous_suite, "streaming": streaming_suite,
              "adapters": adapters_suite}
    for name in args.suite:
        suites[name](root, args)


if __name__ == "__main__":
    main()
