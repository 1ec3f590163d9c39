"""Measured peak training memory, to calibrate ACTIVATION_FACTOR and to check the estimate against (tests).

`measure_peak(probe)` trains a scratch Llama for a few steps with a plain PyTorch loop (AdamW, one fixed batch of
random token ids) in a fresh Python process, and returns how far its peak memory rose above a baseline taken after
the imports and a warm-up with a tiny model (lazy imports, thread pools and kernel caches belong to the process,
not to the model). Two measures of the peak:
- `maxrss_bytes`: the rise of `ru_maxrss`, the peak resident set. It also counts the file-backed pages of the
  libraries, which the kernel may reclaim when another process needs memory: on the shared development machine one
  run read 88 MiB for a peak every other run measured at 134 MiB, most likely for that reason.
- `peak_bytes`: the rise of the anonymous resident memory (resident - file-backed, /proc/self/statm), sampled
  every millisecond. Tensors are anonymous memory and there is no swap to evict them, so this is what the
  tensors hold however busy the machine; it agrees with `maxrss_bytes` on a quiet one (docs/planning.md).

The child runs with `MALLOC_MMAP_THRESHOLD_` pinned to glibc's initial 128 KiB. By default glibc raises that
threshold as large blocks are freed, after which freed tensor memory stays in the heap: resident memory then creeps
up step after step and stops measuring the tensors (docs/planning.md has the figures). Pinned, every tensor above
128 KiB gets its own mapping and goes back to the system when freed, so the peak is that of live tensors.

    python -m ftcore.planning.measure                 # measure the calibration probes, fit ACTIVATION_FACTOR
    python -m ftcore.planning.measure --test-probes   # the test's probes, with and without each precaution
    python -m ftcore.planning.measure --options       # ... with gradient checkpointing, bf16, as a mixtral
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from ftcore.models.config import ModelConfig, ScratchModelConfig
from ftcore.planning.estimate import ACTIVATION_FACTOR, Memory, Setup, activation_bytes, training_memory
from ftcore.planning.shape import lora_config, model_shape, peft_trainable

GLIBC_INITIAL_MMAP_THRESHOLD = 128 * 1024


@dataclass(frozen=True)
class Probe:
    """A training configuration to measure: a scratch Llama, a method, a fixed batch."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    batch_size: int
    seq_len: int
    method: Literal["full", "lora"]
    lora_r: int = 8
    steps: int = 2  # step 1 already holds the optimizer states; later steps measured the same peak
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16: autocast, as the trainer's bf16=True
    architecture: Literal["llama", "mixtral"] = "llama"  # mixtral: 4 experts, 2 per token (the scratch defaults)

    def model_config(self) -> ModelConfig:
        return ModelConfig(source="scratch", scratch=ScratchModelConfig(
            architecture=self.architecture, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, max_position_embeddings=max(256, self.seq_len)))


@dataclass(frozen=True)
class Measured:
    peak_bytes: float  # anonymous memory, sampled (see the module docstring)
    maxrss_bytes: float
    total_params: int
    trainable_params: int
    seconds: float


def estimate(probe: Probe, factor: float | None = None) -> Memory:
    """The planner's estimate for a probe (with another activation factor when calibrating)."""
    cfg = probe.model_config()
    shape = model_shape(cfg)
    setup = Setup(probe.batch_size, probe.seq_len, shape.bytes_per_param, probe.gradient_checkpointing,
                  autocast=probe.mixed_precision != "no")
    if probe.method == "full":
        memory = training_memory("full", shape, shape.total_params, setup)
    else:
        memory = training_memory("adapter", shape, peft_trainable(cfg, lora_config(probe.lora_r, "all-linear")), setup)
    return memory if factor is None else replace(memory, activations=activation_bytes(shape, setup, factor))


def measure_peak(probe: Probe, pin_malloc: bool = True, warm_up: bool = True) -> Measured:
    """`pin_malloc` and `warm_up` off show what each precaution removes (`--test-probes`)."""
    env = dict(os.environ)
    if pin_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(GLIBC_INITIAL_MMAP_THRESHOLD)
    child = json.dumps({"probe": asdict(probe), "warm_up": warm_up})
    done = subprocess.run([sys.executable, "-m", "ftcore.planning.measure", "--child", child],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"memory probe failed: {done.stderr[-2000:]}")
    return Measured(**json.loads(done.stdout.strip().splitlines()[-1]))


def _child(probe: Probe, warm_up: bool) -> dict:
    import resource
    import time

    import torch
    from peft import get_peft_model

    from ftcore.models.scratch import build_model
    from ftcore.planning.shape import VocabOnly, count_params

    def train(p: Probe, steps: int) -> tuple[int, int]:
        model = build_model(p.model_config().scratch, VocabOnly(p.vocab_size))
        if p.method == "lora":
            model = get_peft_model(model, lora_config(p.lora_r, "all-linear"))
        if p.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=1e-3)
        ids = torch.randint(0, p.vocab_size, (p.batch_size, p.seq_len))
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p.mixed_precision == "bf16"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return count_params(model)

    def maxrss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    if warm_up:  # see the module docstring
        train(Probe(16, 32, 1, 2, 64, 1, 8, probe.method), steps=1)
    rss_baseline, started = maxrss(), time.perf_counter()
    torch.manual_seed(0)
    with AnonymousPeak() as anonymous:
        trainable, total = train(probe, probe.steps)
    return {"peak_bytes": anonymous.peak - anonymous.baseline, "maxrss_bytes": maxrss() - rss_baseline,
            "total_params": total, "trainable_params": trainable, "seconds": time.perf_counter() - started}


class AnonymousPeak:
    """The highest anonymous resident memory of this process while the block runs, sampled every millisecond."""

    def __init__(self):
        import threading

        self.baseline = self.peak = anonymous_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, anonymous_bytes())

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_bytes())


def anonymous_bytes() -> int:
    """Resident minus file-backed (and shared) pages: the process's own memory (Linux /proc/self/statm)."""
    fields = Path("/proc/self/statm").read_text().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


# Calibration probes: shapes, batches and lengths unlike each other and unlike TEST_PROBES, so that the fitted
# factor is checked on a configuration it was not fitted to.
CALIBRATION_PROBES = [
    Probe(192, 512, 6, 4, 2048, batch_size=8, seq_len=64, method=m) for m in ("full", "lora")
] + [
    Probe(384, 1024, 2, 6, 8192, batch_size=2, seq_len=256, method=m) for m in ("full", "lora")
] + [
    Probe(128, 256, 4, 4, 512, batch_size=8, seq_len=128, method=m) for m in ("full", "lora")
]
TEST_PROBES = [Probe(256, 688, 4, 4, 4096, batch_size=4, seq_len=128, method=m) for m in ("full", "lora")]


def fit_factor(probes: list[Probe], measured: list[Measured]) -> float:
    """Least squares on relative error: the factor that makes estimate / measured closest to 1 over the probes.
    The estimate is linear in the factor where activations dominate (all calibration probes): peak = rest + f x a."""
    num = den = 0.0
    for probe, m in zip(probes, measured, strict=True):
        at_one, at_two = estimate(probe, 1.0).peak, estimate(probe, 2.0).peak
        a = at_two - at_one  # the factor's share per unit
        rest = at_one - a
        num += a * (m.peak_bytes - rest) / m.peak_bytes**2
        den += a * a / m.peak_bytes**2
    return num / den


def _describe(probe: Probe, estimated: float, measured: Measured, note: str = "") -> str:
    return (f"  {probe.method:4s} h={probe.hidden_size} i={probe.intermediate_size} L={probe.num_layers} "
            f"V={probe.vocab_size} b={probe.batch_size} s={probe.seq_len}{note}: estimated {estimated / 2**20:.1f} "
            f"MiB, measured {measured.peak_bytes / 2**20:.1f} MiB "
            f"({(estimated - measured.peak_bytes) / measured.peak_bytes:+.1%}; ru_maxrss "
            f"{measured.maxrss_bytes / 2**20:.1f} MiB; {measured.seconds:.1f} s)")


def _calibrate() -> None:
    measured = [measure_peak(probe) for probe in CALIBRATION_PROBES]
    factor = fit_factor(CALIBRATION_PROBES, measured)
    print(f"fitted ACTIVATION_FACTOR = {factor:.3f} (in use: {ACTIVATION_FACTOR})")
    for probe, m in zip(CALIBRATION_PROBES, measured, strict=True):
        print(_describe(probe, estimate(probe, factor).peak, m))


def _check_test_probes() -> None:
    """The test's probes as the test measures them, then without each precaution."""
    for probe in TEST_PROBES:
        est = estimate(probe).peak
        print(_describe(probe, est, measure_peak(probe)))
        print(_describe(probe, est, measure_peak(probe, warm_up=False), " [no warm-up]"))
        for steps in (2, 5):
            longer = replace(probe, steps=steps)
            print(_describe(longer, est, measure_peak(longer, pin_malloc=False), f" [glibc default, {steps} steps]"))


def _check_options() -> None:
    """The test's probes with the train options that change activations, and as a mixture of experts (estimated,
    not calibrated on them)."""
    for probe in TEST_PROBES:
        for option in ({"gradient_checkpointing": True}, {"mixed_precision": "bf16"}, {"architecture": "mixtral"}):
            varied = replace(probe, **option)
            print(_describe(varied, estimate(varied).peak, measure_peak(varied), f" {option}"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        spec = json.loads(sys.argv[2])
        print(json.dumps(_child(Probe(**spec["probe"]), spec["warm_up"])))
    elif sys.argv[1:2] == ["--test-probes"]:
        _check_test_probes()
    elif sys.argv[1:2] == ["--options"]:
        _check_options()
    else:
        _calibrate()
