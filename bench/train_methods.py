"""Train stage: tokens/s and peak memory of full fine-tuning, LoRA and QLoRA, and packing against padding.

Tokens per second and peak memory of full fine-tuning, LoRA and QLoRA on one model, as ratios to full fine-tuning;
and tokens per second with `train.packing: true` against padding on variable-length data (target: packing >= 1.5x
padding).

Measures ftflow's own train path. The stages before train run once in this process: collect and clean the MedQuAD
recipe (data_recipes/recipes/shared/medquad_qa.yaml: real question/answer pairs of 23 to ~600 tokens, from
../shared/data), then `init_stage` once per method on the same data: a scratch Llama built from config (33.5M
parameters by default; the same weights and tokenizer for every method; QLoRA's base loads in 4-bit NF4). Each
configuration then runs the train stage's function (`train_stage`) in a fresh process, so that
its memory is its own:

- full, lora, qlora: padded batches (`train.packing: false`), the same `--steps` steps over the same batches;
- `--packing-method` (default lora) with `train.packing: true`: TRL packs examples into `max_length` sequences (best
  fit decreasing, padding-free), the same number of steps.

Tokens per second are the stage's `tokens_per_second` metric: non-padding input tokens seen over the seconds of
`trainer.train()`. Pad tokens are not counted, so the compute padding wastes shows as fewer tokens per second, and
packing/padding compares useful work per second. Also printed: tokens per CPU-second of `trainer.train()`, which
other load on a shared machine disturbs less (with `--threads 1`).

Memory, per process (resident set on CPU, allocated memory on CUDA): the peak of the whole stage (loading, training,
writing and, for adapters, merging the output), the peak within `trainer.train()` (the peak count is reset when it
begins) and what training added to the memory in use when it began (gradients, optimizer state, activations); and,
counted from the tensors themselves, the bytes of the weights, gradients and optimizer state the method keeps.
Linux only (reads /proc). Record the figures in docs/benchmarks.md.

    python bench/train_methods.py [--steps N] [--repeats N] [--threads N] [--packing-method M] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "data_recipes" / "recipes" / "shared" / "medquad_qa.yaml"
MEDQUAD = REPO.parent / "shared" / "data" / "medquad_sample_every16.jsonl"
# A scratch Llama of 33.5M parameters (8 layers of width 512, 8 heads, vocabulary 8,000: 25.3M in the blocks, 8.2M in
# the embeddings and the output layer), trained on batches of 8 examples cut at 256 tokens, the recipe's max_length:
# about a third of the train split's examples are longer and are cut, the rest are 23-255 tokens long. No checkpoint
# falls within the timed steps (what checkpoints cost is bench/resume.py's subject).
DEFAULT_OVERRIDES = [
    "model.scratch.hidden_size=512",
    "model.scratch.num_hidden_layers=8",
    "model.scratch.num_attention_heads=8",
    "model.scratch.intermediate_size=1376",
    "model.scratch.vocab_size=8000",
    "model.scratch.max_position_embeddings=512",
    "train.max_length=256",
    "train.batch_size=8",
    "train.save_steps=100000",
]
# The same adapter for LoRA and QLoRA (the recipe's r=8 on every linear layer); QLoRA's base is 4-bit NF4 with
# double quantisation and float32 compute, its defaults on CPU.
METHODS = {"full": "method={name: full}", "lora": "method={name: lora, r: 8}", "qlora": "method={name: qlora, r: 8}"}


def prepare(recipe: Path, overrides: list[str], steps: int, methods: list[str], root: Path) -> dict[str, Path]:
    """The stages before train, run once: the cleaned splits, then the init stage per method. Returns, per method,
    the JSON file its training processes read their inputs from."""
    from ftcore.data.clean import clean_balance_stage
    from ftcore.data.collect import CollectJob, collect_stage
    from ftcore.jobs import clean_job
    from ftcore.models.init import InitJob, init_stage
    from ftcore.recipe import load_recipe

    dataset, inputs = None, {}
    for method in methods:
        loaded = load_recipe(recipe, [*overrides, f"train.max_steps={steps}", METHODS[method]])
        if dataset is None:
            collected = collect_stage(CollectJob(data=loaded.data, sources={}), root / "collect")
            dataset = clean_balance_stage(clean_job(loaded, collected), root / "clean")
        base = init_stage(InitJob(model=loaded.model, method=loaded.method, dataset=dataset), root / f"init-{method}")
        inputs[method] = root / f"inputs-{method}.json"
        inputs[method].write_text(json.dumps({
            "base": base.model_dump(mode="json"),
            "dataset": dataset.model_dump(mode="json"),
            "train": loaded.train.model_dump(mode="json"),
        }))
    return inputs


def memory_now_mb() -> float:
    """Memory in use now, in the unit of the stage's `peak_memory_mb`: allocated GPU memory on CUDA, else the
    process's resident set (VmRSS)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    return _proc_status_mb("VmRSS")


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def train_child(inputs: Path, packing: str, out_dir: Path, report: Path) -> None:
    """One training process: the libraries the train stage uses are imported first (their memory is measured apart),
    then one call of the train stage's function; a callback measures `trainer.train()` (its peak memory and CPU
    time) and what training holds after an optimizer step."""
    import peft  # noqa: F401
    import trl  # noqa: F401
    from transformers import TrainerCallback

    from ftcore.outputs import DatasetOutput, ModelOutput
    from ftcore.training import train as stage
    from ftcore.training.analytics import peak_memory_mb, reset_peak_memory
    from ftcore.training.config import TrainConfig
    from ftcore.training.jobs import TrainJob

    after_imports = memory_now_mb()
    measured = {}

    class Measure(TrainerCallback):
        """Memory and CPU time of `trainer.train()` alone: the peak so far (importing, loading the model, tokenizing
        the data) is kept and the peak count restarts when training begins."""

        def on_train_begin(self, args, state, control, **kwargs):
            measured["before_train_peak_mb"] = peak_memory_mb()
            measured["at_train_begin_mb"] = memory_now_mb()
            reset_peak_memory()
            measured["cpu_at_start"] = time.process_time()

        def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
            measured["state"] = state_bytes(model, optimizer)  # after the update, while the gradients exist

        def on_train_end(self, args, state, control, **kwargs):
            measured["train_cpu_s"] = time.process_time() - measured.pop("cpu_at_start")
            measured["train_peak_mb"] = peak_memory_mb()

    spec = json.loads(inputs.read_text())
    cfg = TrainConfig.model_validate({**spec["train"], "packing": packing == "packing"})
    started = time.time()
    out = stage.train_stage(TrainJob(base=ModelOutput.model_validate(spec["base"]),
                                     dataset=DatasetOutput.model_validate(spec["dataset"]), train=cfg),
                            out_dir, callbacks=[Measure()])
    # The peak count restarted when training began: the whole stage's peak is the larger of the two.
    stage_peak = max(peak_memory_mb(), measured["before_train_peak_mb"])
    report.write_text(json.dumps({"seconds": time.time() - started, "metrics": out.metrics, "stage_peak_mb": stage_peak,
                                  "after_imports_mb": after_imports, **measured}))


def state_bytes(model, optimizer) -> dict[str, int]:
    """Bytes of the tensors training holds between steps, counted from the tensors themselves: the weights (4-bit
    weights with their quantisation constants), the gradients and the optimizer's state. Activations come on top,
    within each step."""
    seen: set[int] = set()

    def size(tensors) -> int:
        total = 0
        for t in tensors:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    def quant_constants(p):
        q = getattr(p, "quant_state", None)
        nested = getattr(q, "state2", None)
        return [getattr(q, "absmax", None), getattr(q, "code", None), getattr(nested, "absmax", None),
                getattr(nested, "code", None)]

    params = list(model.parameters())
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    return {
        "weights": size([*params, *model.buffers()]) + size(c for p in params for c in quant_constants(p)),
        "gradients": size(p.grad for p in params),
        "optimizer": size(v for st in inner.state.values() for v in st.values() if hasattr(v, "data_ptr")),
    }


def run_config(inputs: Path, packing: bool, work: Path, name: str) -> dict:
    """The train stage in a fresh process; its output (the progress bar) goes to a file. The torch thread count comes
    from OMP_NUM_THREADS (`--threads`)."""
    work.mkdir(parents=True, exist_ok=True)
    report = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(inputs),
           "packing" if packing else "padding", str(work / name), str(report)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    with report.with_suffix(".log").open("w") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"{name}: training process failed ({done.returncode}):\n"
                 f"{report.with_suffix('.log').read_text()[-3000:]}")
    return json.loads(report.read_text())


def machine() -> str:
    import bitsandbytes
    import peft
    import torch
    import transformers
    import trl

    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {mem / 2**20:.0f} GiB, {gpu}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"trl {trl.__version__}, peft {peft.__version__}, bitsandbytes {bitsandbytes.__version__}")


def line(name: str, r: dict) -> str:
    m, held = r["metrics"], r["state"]
    tokens = m["tokens_per_second"] * m["runtime_s"]
    return (f"{name:<12} {m['tokens_per_second']:5.0f} tokens/s ({tokens:,.0f} non-padding tokens, {m['steps']:.0f} "
            f"steps, {m['runtime_s']:.1f} s; {tokens / r['train_cpu_s']:.0f} per CPU-second); memory: peak of the "
            f"stage {r['stage_peak_mb']:,.0f} MiB, peak in training {r['train_peak_mb']:,.0f}"
            f" (at its start "
            f"{r['at_train_begin_mb']:,.0f}; peak before it {r['before_train_peak_mb']:,.0f}; after the imports "
            f"{r['after_imports_mb']:,.0f}); weights + gradients + optimizer state {mib(held['weights'])} + "
            f"{mib(held['gradients'])} + {mib(held['optimizer'])} = {mib(sum(held.values()))} MiB; trainable "
            f"{m['trainable_params']:,.0f} of {m['total_params']:,.0f} parameters; mean loss {m['train_loss']:.3f}")


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        train_child(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", help="recipe override a.b=value, after the "
                                                                          f"defaults: {' '.join(DEFAULT_OVERRIDES)}")
    parser.add_argument("--steps", type=int, default=12, help="training steps of every configuration")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every configuration (the median is used)")
    parser.add_argument("--packing-method", choices=sorted(METHODS), default="lora",
                        help="the method trained with packing, against the same method with padding")
    parser.add_argument("--threads", type=int, help="torch threads per training process (default: torch's); 1 "
                                                    "keeps the timing steadier on a machine other work shares")
    args = parser.parse_args()
    overrides = [*DEFAULT_OVERRIDES, *(args.overrides or [])]
    if args.recipe == RECIPE and not MEDQUAD.is_file():
        print(f"skipped: the benchmark trains on {MEDQUAD} (../shared/data beside the repository), which is absent")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    configs = [("full", "full", False), ("lora", "lora", False), ("qlora", "qlora", False),
               (f"{args.packing_method} packing", args.packing_method, True)]
    padded = args.packing_method  # the padded configuration packing is compared with
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-train-methods-") as tmp:
        root = Path(tmp)
        os.environ["FTFLOW_HOME"] = str(root / "home")
        started = time.time()
        inputs = prepare(args.recipe, overrides, args.steps, list(METHODS), root / "prepared")
        cfg = json.loads(inputs["full"].read_text())["train"]
        print(f"{args.recipe.name}, {args.steps} steps of {cfg['batch_size']} examples cut at {cfg['max_length']} "
              f"tokens per configuration, torch threads {args.threads or 'default'} (prepared in "
              f"{time.time() - started:.0f} s); {machine()}", flush=True)
        results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        for i in range(1, args.repeats + 1):
            for name, method, packing in configs:
                r = run_config(inputs[method], packing, root / f"repeat-{i}", name.replace(" ", "-"))
                if r["metrics"]["steps"] != args.steps:
                    sys.exit(f"{name} trained {r['metrics']['steps']} steps, not {args.steps}")
                results[name].append(r)
                print(f"repeat {i} (load {os.getloadavg()[0]:.1f}) {line(name, r)}", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r["metrics"][key] if key in r["metrics"] else r[key] for r in results[name])

    def per_cpu_second(name: str) -> float:
        return statistics.median(r["metrics"]["tokens_per_second"] * r["metrics"]["runtime_s"] / r["train_cpu_s"]
                                 for r in results[name])

    def held(name: str) -> int:  # the same in every repeat
        return sum(results[name][0]["state"].values())

    total, adapter = (results[n][0]["metrics"]["total_params"] for n in ("full", "lora"))
    print(f"\nmodel: scratch Llama, {total:,.0f} parameters (the LoRA adapter adds {adapter - total:,.0f}); medians "
          f"of {args.repeats} repeat(s); ratios to full fine-tuning:")
    for name in ("lora", "qlora"):
        speed = median(name, "tokens_per_second") / median("full", "tokens_per_second")
        cpu_speed = per_cpu_second(name) / per_cpu_second("full")
        peak, full_peak = median(name, "stage_peak_mb"), median("full", "stage_peak_mb")
        train, full_train = median(name, "train_peak_mb"), median("full", "train_peak_mb")
        grew, full_grew = (median(n, "train_peak_mb") - median(n, "at_train_begin_mb") for n in (name, "full"))
        print(f"  {name:<5}/ full: tokens/s {speed:.2f}x (per CPU-second {cpu_speed:.2f}x); peak memory "
              f"{peak / full_peak:.2f}x ({peak:,.0f} / {full_peak:,.0f} MiB); peak in training "
              f"{train / full_train:.2f}x ({train:,.0f} / {full_train:,.0f} MiB), added during training "
              f"{grew / full_grew:.2f}x "
              f"({grew:,.0f} / {full_grew:,.0f} MiB); weights + gradients + optimizer state "
              f"{held(name) / held('full'):.3f}x ({mib(held(name))} / {mib(held('full'))} MiB)")
    packed = f"{padded} packing"
    pack, pad = median(packed, "tokens_per_second"), median(padded, "tokens_per_second")
    print(f"  packing / padding ({padded}): non-padding tokens/s {pack / pad:.2f}x ({pack:,.0f} / {pad:,.0f}; per "
          f"CPU-second {per_cpu_second(packed) / per_cpu_second(padded):.2f}x); target >= 1.5x")

if __name__ == "__main__":
    main()
