"""Was a version trained on this base? Asked wherever an adapter is put on a base other than the one it came with:
`ftflow serve BASE --adapter` (ftcore/serving/adapters.py) and an adapter export written beside a base export
(`ftflow export --kind adapter --base DIR`, what vLLM's `--lora-modules` serves). Two checks, read from the
safetensors files one tensor at a time so that a large model is not loaded to ask:

- the tensors the adapter leaves alone, the largest first, must be the base's: a version trained on another base
  differs there (its embeddings, say);
- for the first LoRA modules, the base's weight plus the adapter's delta must be the version's merged weight: a
  version trained on this base with another adapter merged into it (`model.source: champion`, `start: merged`) has
  the base's embeddings but not its projections."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

UNTOUCHED_CHECKED = 3  # the base's largest tensors an adapter leaves alone, compared with the version's
DELTAS_CHECKED = 2  # LoRA modules whose base weight + delta is compared with the version's merged weight


def other_base(version: Path, adapter: Path, base: Path) -> str | None:
    """Why the version in `version` (its adapter in `adapter`) was not trained on the model in `base`, in a few
    words; None when it was."""
    import torch

    if missing := missing_weights(base):
        return f"no {', '.join(missing)} in the base folder, and the check reads safetensors files"
    touched = adapted_modules(adapter)
    with Tensors(base) as base_tensors, Tensors(version) as version_tensors:
        shapes = {name: base_tensors.shape(name) for name in base_tensors.names()}
        if set(shapes) != set(version_tensors.names()):
            return "its weights have other names (another architecture)"
        untouched = [n for n in shapes if n.rsplit(".", 1)[0] not in touched]
        largest = sorted(untouched, key=lambda n: (-_numel(shapes[n]), n))[:UNTOUCHED_CHECKED]
        for name in largest:
            mine, theirs = base_tensors.get(name), version_tensors.get(name)
            if mine.shape != theirs.shape or not torch.allclose(mine.float(), theirs.float(), atol=1e-6):
                return f"its {name} differs from the base's"
        for module, delta in itertools.islice(lora_deltas(adapter), DELTAS_CHECKED):
            name = f"{module}.weight"
            if not torch.allclose(base_tensors.get(name).float() + delta, version_tensors.get(name).float(),
                                  atol=1e-4, rtol=1e-3):
                return f"its merged {name} is not the base's plus the adapter"
    return None


def lora_deltas(adapter: Path) -> Iterator[tuple[str, object]]:
    """(module, the change to its weight) for each LoRA pair in the adapter's safetensors, as vLLM computes it:
    lora_B @ lora_A scaled by lora_alpha / r (/ sqrt(r) with rsLoRA), transposed for fan-in-fan-out layers. Nothing
    for an adapter that is not LoRA."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        return
    rank = config["r"]
    scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    pairs = load_file(str(adapter / "adapter_model.safetensors"))
    for key, down in sorted(pairs.items()):
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            delta = scale * (pairs[f"base_model.model.{module}.lora_B.weight"].float() @ down.float())
            yield module, delta.T if config.get("fan_in_fan_out") else delta


def missing_weights(folder: Path) -> list[str]:
    """The safetensors files the folder's weights should be in (model.safetensors, or its index's shards) that it
    lacks: a folder saved as pytorch_model.bin has them all missing."""
    return [path.name for path in Tensors(folder).paths if not path.is_file()]


def adapted_modules(adapter: Path) -> set[str]:
    """The modules the adapter changes (its LoRA layers and modules_to_save), by the base model's names."""
    from safetensors import safe_open

    modules = set()
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = f.keys()  # safe_open is not iterable
        for key in keys:
            name = key.removeprefix("base_model.model.")
            name = re.split(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector|modules_to_save)\b", name)[0]
            modules.add(name.rsplit(".weight", 1)[0].rsplit(".bias", 1)[0])
    return modules


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class Tensors:
    """The tensors of a model folder's safetensors (sharded or not), read one at a time."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else \
            ["model.safetensors"]
        self.paths = [folder / f for f in files]

    def __enter__(self):
        from safetensors import safe_open

        self._files = [safe_open(str(p), "pt") for p in self.paths]
        self._where = {name: f for f in self._files for name in list(f.keys())}
        return self

    def __exit__(self, *exc) -> None:
        self._files = []

    def names(self):
        return self._where.keys()

    def shape(self, name: str):
        return self._where[name].get_slice(name).get_shape()

    def get(self, name: str):
        return self._where[name].get_tensor(name)
