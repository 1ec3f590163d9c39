"""Training analytics beyond the Trainer's own log: peak memory, and how much each layer's weights were trained."""

from __future__ import annotations

import contextlib
import re
import resource
import sys
from collections import defaultdict
from pathlib import Path

from ftcore.tensors import safetensors_tensors

# Transformer blocks are numbered modules under one of these names (Llama/Mistral `layers`, GPT-2 `h`, ...).
_LAYER = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


def reset_peak_memory() -> None:
    """Start counting the peak anew, so that it is the stage's own: a flow runs every stage in one process, and a
    child process's ru_maxrss starts at its parent's. On Linux, writing 5 to clear_refs resets the peak resident set
    (VmHWM); elsewhere the peak stays the process's."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    """Peak memory since `reset_peak_memory`: allocated GPU memory when training on CUDA, else the peak resident set
    (VmHWM on Linux, the process's ru_maxrss elsewhere)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def layer_weight_norms(model, base_path: Path, adapter: bool) -> dict[str, float]:
    """L2 norm per layer (`layer 0`, `layer 1`, ..., then named groups outside the blocks, e.g. `lm_head`).

    Adapter methods: the norm of the trained adapter weights (every trainable tensor), which for LoRA is what training
    added since B starts at zero. Full fine-tuning: the norm of the change from the base weights in `base_path`.
    """
    squares: dict[str, float] = defaultdict(float)
    if adapter:
        for name, param in model.named_parameters():
            if param.requires_grad:
                squares[_group(name)] += float(param.detach().float().pow(2).sum())
    else:
        trained = dict(model.named_parameters())
        for name, before in _safetensors_tensors(base_path):
            if name in trained:
                change = trained[name].detach().float().cpu() - before.float()
                squares[_group(name)] += float(change.pow(2).sum())
    return {group: squares[group] ** 0.5 for group in sorted(squares, key=_order)}


def _safetensors_tensors(folder: Path):
    """(name, tensor) for every tensor of a model folder's safetensors files (sharded or not), one at a time."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        yield from safetensors_tensors(path)


def _group(name: str) -> str:
    match = _LAYER.search(name)
    if match:
        return f"layer {match.group(1)}"
    # Outside the blocks: the module's name without PEFT's wrapper prefix and the parameter's own name.
    return name.removeprefix("base_model.model.").rsplit(".", 1)[0]


def _order(group: str) -> tuple[int, int, str]:
    return (0, int(group.split()[1]), "") if group.startswith("layer ") else (1, 0, group)
