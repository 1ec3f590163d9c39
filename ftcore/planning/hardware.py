"""What this machine offers for training: CPU cores and RAM, CUDA devices and their memory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# Not measured here (no GPU on the machines ftflow is developed on): the CUDA context and kernel images take
# about this much of a device's memory before the first tensor.
CUDA_CONTEXT_BYTES = 0.5e9
# On the CPU, glibc's allocator keeps freed activation memory in its heap once it has raised its mmap threshold, so
# after a few steps a training process holds about one more set of activations than its live peak (measured on the
# planner's test probes after 5 to 20 steps: +0.7x to +1.3x the activations; docs/planning.md).
GLIBC_HEAP_RETENTION = 1.0


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Hardware:
    cpu_cores: int
    ram_bytes: int
    ram_available_bytes: int
    process_bytes: int  # this process's resident memory: Python plus the libraries a training process also loads
    gpus: list[Gpu] = field(default_factory=list)

    @property
    def device(self) -> str:
        """Where the train stage runs: the first GPU when there is one (it trains on one device), else the CPU."""
        return f"cuda:0 ({self.gpus[0].name})" if self.gpus else "cpu"

    @property
    def memory_bytes(self) -> int:
        return self.gpus[0].memory_bytes if self.gpus else self.ram_bytes

    @property
    def overhead_bytes(self) -> float:
        """Memory a training process holds besides its tensors: the CUDA context on a GPU; on the CPU, the
        interpreter and libraries, which this process (having imported torch, transformers and peft) shows."""
        return CUDA_CONTEXT_BYTES if self.gpus else self.process_bytes

    @property
    def heap_retention(self) -> float:
        """Activations' worth of freed memory the process keeps resident (CPU training only)."""
        return 0.0 if self.gpus else GLIBC_HEAP_RETENTION

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_cores": self.cpu_cores, "ram_bytes": self.ram_bytes,
                "ram_available_bytes": self.ram_available_bytes, "process_bytes": self.process_bytes,
                "gpus": [{"name": g.name, "memory_bytes": g.memory_bytes} for g in self.gpus],
                "device": self.device, "memory_bytes": self.memory_bytes, "overhead_bytes": self.overhead_bytes,
                "heap_retention": self.heap_retention}


def detect_hardware() -> Hardware:
    import psutil  # a dependency of accelerate and peft
    import torch

    memory = psutil.virtual_memory()
    gpus = [Gpu(p.name, p.total_memory) for p in map(torch.cuda.get_device_properties,
                                                    range(torch.cuda.device_count()))]
    return Hardware(
        cpu_cores=_usable_cores(),
        ram_bytes=memory.total,
        ram_available_bytes=memory.available,
        process_bytes=psutil.Process().memory_info().rss,
        gpus=gpus,
    )


def _usable_cores() -> int:
    # The cores this process may run on (a container's CPU set), not every core of the host.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
