"""Load test of the endpoint: dynamic batching on versus off, and the response cache, in one invocation.

The clinical demo recipe is trained (library calls, no Prefect) and served by `ftflow serve` in its own process on
127.0.0.1, as in production. `--clients` concurrent clients send `--requests` greedy completions of the demo's test
prompts (each phase stops early after `--max-seconds`). Phases:
  1. batching on (max batch `--batch-size`, max wait `--max-wait-ms`), cache off;
  2. batching off (one request at a time), cache off;
  3. cache on: each prompt once (misses), then the same requests again (hits).
Prints throughput and p50/p99 latency per phase, the batching speed-up, and the cache's hit and miss latency. Run
with `make bench-serve`; record the figures in docs/benchmarks.md.

    python bench/serve_load.py [--requests 1000] [--clients 16] [--batch-size 16] [--max-wait-ms 20]
    python bench/serve_load.py --model FOLDER --prompts prompts.jsonl --max-tokens 64 --device cuda   # any model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Phase:
    name: str
    latencies: list[float]
    failures: int
    seconds: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def line(self) -> str:
        return (f"{self.name:<34} {len(self.latencies):>5} ok {self.failures:>3} failed  {self.throughput:7.1f} req/s  "
                f"p50 {self.percentile(0.5) * 1000:7.1f} ms  p99 {self.percentile(0.99) * 1000:7.1f} ms")


def demo_to_serve(root: Path) -> tuple[Path, list[str], int]:
    """The demo model trained as the recipe says, its test prompts, and the recipe's max_new_tokens."""
    import pandas as pd
    from demo_model import train_demo

    from ftcore.evaluation.language import eval_examples
    from ftcore.models.load import load_tokenizer

    recipe, dataset, trained = train_demo(root)
    rows = pd.concat([pd.read_parquet(dataset.splits[s]) for s in ("test", "validation", "train")])
    prompts = eval_examples(rows, load_tokenizer(trained.model_path))["prompt"].tolist()
    return trained.model_path, prompts, recipe.evaluate.max_new_tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, root: Path, name: str, settings: dict) -> tuple[subprocess.Popen, str]:
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"request_log": {"url": f"sqlite:///{root / name}.db"}, **settings}))
    port = free_port()
    # `ftflow serve`, through this interpreter (where the package is on the path but not installed, as on a GPU box).
    command = [sys.executable, "-c", "from flows.cli import main; main()", "serve", str(model), "--port", str(port),
               "--config", str(config)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.get(f"{url}/health", timeout=2).raise_for_status()
            return process, url
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server for {name} did not start") from None
            time.sleep(0.5)


async def load(url: str, bodies: list[dict], clients: int, max_seconds: float, name: str) -> Phase:
    """`clients` workers take the next body until none is left or time is up; each waits for its answer before
    sending again (closed loop, like users)."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    failures = 0
    started = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while not queue.empty() and time.perf_counter() - started < max_seconds:
            body = queue.get_nowait()
            sent = time.perf_counter()
            response = await http.post("/v1/completions", json=body)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - sent)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return Phase(name, latencies, failures, time.perf_counter() - started)


def run_phase(model: Path, root: Path, name: str, settings: dict, bodies: list[dict], args) -> list[Phase]:
    process, url = start_server(model, root, name, settings)
    try:
        # Warm-up requests ask for one token less: the same work, but another cache key.
        warm = [dict(b, max_tokens=b["max_tokens"] - 1) for b in bodies[: 2 * args.clients]]
        asyncio.run(load(url, warm, args.clients, args.max_seconds, "warm-up"))
        if name != "cache":
            return [asyncio.run(load(url, bodies, args.clients, args.max_seconds, name))]
        unique = list({b["prompt"]: b for b in bodies}.values())
        misses = asyncio.run(load(url, unique, 1, args.max_seconds, "cache misses (1 client)"))
        hits = asyncio.run(load(url, unique, 1, args.max_seconds, "cache hits (1 client)"))
        return [misses, hits]
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="each phase stops sending after this")
    parser.add_argument("--model", type=Path, help="serve this model folder instead of training the demo")
    parser.add_argument("--prompts", type=Path, help="with --model: a JSONL file of prompt strings")
    parser.add_argument("--max-tokens", type=int, help="default: the demo recipe's evaluate.max_new_tokens")
    parser.add_argument("--device", default="cpu", help="where the server runs the model: cpu, cuda")
    args = parser.parse_args()
    os.environ.setdefault("FTFLOW_HOME", tempfile.mkdtemp(prefix="ftflow-bench-serve-"))
    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-serve-"))
    if args.model is None:
        model, prompts, max_tokens = demo_to_serve(root)
    else:
        model, max_tokens = args.model, 32
        prompts = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    max_tokens = args.max_tokens or max_tokens
    bodies = [{"prompt": prompts[i % len(prompts)], "max_tokens": max_tokens, "temperature": 0}
              for i in range(args.requests)]
    no_cache = {"cache": {"max_entries": 0}, "device": args.device}
    batched = {"batching": {"max_batch_size": args.batch_size, "max_wait_ms": args.max_wait_ms}, **no_cache}
    on = run_phase(model, root, f"batching on (batch {args.batch_size}, {args.max_wait_ms:g} ms)", batched, bodies,
                   args)[0]
    off = run_phase(model, root, "batching off", {"batching": {"enabled": False}, **no_cache}, bodies, args)[0]
    misses, hits = run_phase(model, root, "cache", {"device": args.device}, bodies, args)

    import torch

    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, "
          f"torch threads {torch.get_num_threads()}; model on {args.device}; {args.clients} concurrent clients, "
          f"{len(prompts)} distinct prompts, max_tokens {max_tokens}, greedy")
    for phase in (on, off, misses, hits):
        print(phase.line())
    print(f"batching speed-up: {on.throughput / off.throughput:.2f}x throughput at {args.clients} clients "
          f"(p99 {on.percentile(0.99):.3f} s with batching, target < 2 s)")
    print(f"cache: hit p50 {statistics.median(hits.latencies) * 1000:.2f} ms vs miss p50 "
          f"{statistics.median(misses.latencies) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
