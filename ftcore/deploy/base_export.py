"""The `base` export: the model a version's LoRA adapter is attached to, as a folder of its own (config, safetensors,
tokenizer), for servers that put adapters on a base themselves: vLLM's `--enable-lora --lora-modules NAME=DIR`
(docs/deploy.md, "vLLM"; infra/k8s/gpu/vllm-lora.yaml) and `ftflow serve BASE --adapter`. It is the version's merged
weights with the adapter's delta subtracted (PEFT's unmerge: exact up to float32 rounding).

Its check folds the version's adapter export into it the way vLLM reads an adapter folder (each lora_A, lora_B pair
of adapter_model.safetensors added to the base weight of that name, scaled by lora_alpha / r, or / sqrt(r) with
rsLoRA) and compares the logits with the version's own model on the test prompts: a layout or a scaling vLLM would
read otherwise shows there rather than in production.

An adapter export meant for such a base names it (`ftflow export --kind adapter --to DIR --base BASE_DIR`): the
version must have been trained on that base (ftcore/models/same_base.py), else one line and nothing written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ftcore.deploy.fidelity import LogitCheck, compare_logits
from ftcore.errors import UserError
from ftcore.models.load import load_trained, reload_model, reload_processing, reload_tokenizer, saved_classes
from ftcore.models.peft_methods import unmerged_base
from ftcore.models.same_base import lora_deltas, missing_weights, other_base

ADAPTER_CONFIG = "adapter_config.json"


def refusal(adapter: Path) -> str | None:
    """Why a LoRA version (not DoRA: export._unavailable) with this adapter folder has no base export, in one line;
    None when it has. vLLM refuses modules_to_save (vllm/lora/peft_helper.py) and scales every module by the one
    lora_alpha / r, so per-module ranks would be served wrong."""
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    if config.get("modules_to_save"):
        return (f"its adapter also trains {', '.join(config['modules_to_save'])} in full (modules_to_save), which "
                "vLLM's LoRA serving refuses; export merged or merged_bf16")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("bias", "none") != "none":
        return ("its adapter has per-module ranks or trained biases, which vLLM's LoRA serving does not read; "
                "export merged or merged_bf16")
    return None


def write_base(folder: Path, adapter: Path, out: Path) -> None:
    """The base the version's adapter was merged into, with the version's tokenizer, in `out`."""
    base = unmerged_base(folder, adapter, saved_classes(folder))
    base.save_pretrained(out, safe_serialization=True)
    reload_processing(folder).save_pretrained(out)


def check_base(folder: Path, adapter: Path, out: Path, prompts: Sequence[str]) -> LogitCheck:
    """The base export in `out` with the adapter folded in as vLLM reads it, beside the version's own model."""
    reference, tokenizer = load_trained(folder)
    return compare_logits(reference, tokenizer, lora_folded(out, adapter), reload_tokenizer(out), prompts,
                          "base export with the adapter folded in as vLLM reads it")


def lora_folded(base: Path, adapter: Path):
    """The model in `base` with the adapter's LoRA deltas added to the weights they name."""
    import torch

    model = reload_model(base)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for module, delta in lora_deltas(adapter):
            weight = parameters[f"{module}.weight"]
            weight += delta.to(weight.dtype)
    return model


def check_trained_on(version: Path, adapter: Path, base: Path, uri: str) -> None:
    """Refuse, in one line, to write an adapter export for a base the version was not trained on."""
    if not (base / "config.json").is_file() or missing_weights(base):
        what = "no config.json" if not (base / "config.json").is_file() else f"no {', '.join(missing_weights(base))}"
        raise UserError(f"--base: {base} is not a model folder in safetensors ({what}); give the folder that "
                        f"`ftflow export {uri} --kind base --to DIR` wrote")
    if (why := other_base(version, adapter, base)) is not None:
        raise UserError(f"--base: {uri} was not trained on the model in {base} ({why}); export the base of the "
                        "version the adapters were trained from, or serve this one on its own base")
