"""init stage: produce the base model folder and, for adapter methods, the initial (untrained) adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ftcore.config import LABEL_COLUMN, MethodConfig, ModelConfig
from ftcore.errors import UserError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir, hash_obj
from ftcore.models.load import load_tokenizer, resolve_pretrained
from ftcore.models.peft_methods import (
    EXPORTED_ADAPTER,
    TRAINED_ADAPTER,
    apply_method,
    attach_adapter,
    load_base,
    parameter_counts,
    quantization_config,
    save_adapter,
    unmerged_base,
    write_method_spec,
)
from ftcore.models.registered import ModelRef, model_folder
from ftcore.models.scratch import build_model, train_tokenizer
from ftcore.outputs import DatasetOutput, ModelOutput


def init_model(model_cfg: ModelConfig, method_cfg: MethodConfig, dataset: DatasetOutput, out_dir: Path,
               task: str = "sft", start: ModelRef | None = None) -> ModelOutput:
    """The base (built, a pretrained folder, or for source champion the pinned version `start`) wrapped with the
    method. For task classification the base gets a classification head with one output per class of the train
    split (sorted, so ids are stable); for task reward_model one output."""
    train = pd.read_parquet(dataset.splits["train"])
    classes = model_classes(train, task)
    with atomic_dir(out_dir) as tmp:
        if model_cfg.source == "scratch":
            base_path = out_dir / "base"
            tokenizer = train_tokenizer(corpus(train), model_cfg.scratch.vocab_size)
            model = build_model(model_cfg.scratch, tokenizer, classes)
            model.save_pretrained(tmp / "base", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "base")
            if quantization_config(method_cfg) is not None:
                # The base stays saved in full precision (4-bit weights cannot be saved as a base to merge into);
                # the adapter is built on the base as the train stage will load it.
                model = load_base(tmp / "base", method_cfg, classes=classes)
        elif start is not None and model_cfg.start == "adapter":
            load_from, adapter = continued_adapter(start, tmp, classes)
            model = load_base(load_from, method_cfg, classes=classes)
            tokenizer = load_tokenizer(load_from)
            base_path = out_dir / "base" if load_from == tmp / "base" else load_from
        else:
            base_path = starting_folder(start) if start else resolve_pretrained(model_cfg.name_or_path)
            model = load_base(base_path, method_cfg, model_cfg.trust_remote_code, classes)
            tokenizer = load_tokenizer(base_path, model_cfg.trust_remote_code)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if start is not None and model_cfg.start == "adapter":
            wrapped = attach_adapter(model, adapter, trainable=True)
        else:
            wrapped = apply_method(model, method_cfg, tokenizer)
        adapter_path = None
        if wrapped is not model:
            save_adapter(wrapped, tmp / "adapter")
            adapter_path = out_dir / "adapter"
        write_method_spec(method_cfg, tmp)
        trainable, total = parameter_counts(wrapped)
    content = {"out": hash_dir(out_dir)}
    if model_cfg.source == "pretrained":
        content["base"] = hash_dir(base_path) if Path(base_path).is_dir() else str(base_path)
    elif start is not None:
        content["base"] = start.fingerprint
    return ModelOutput(
        path=out_dir,
        content_hash=hash_obj(content),
        base_path=Path(base_path),
        adapter_path=adapter_path,
        method=method_cfg.name,
        classes=classes or [],
        started_from=start.label if start else None,
        metrics={
            "total_params": total,
            "trainable_params": trainable,
            "trainable_fraction": trainable / total,
            "vocab_size": len(tokenizer),
        },
    )


def starting_folder(start: ModelRef) -> Path:
    """The registered version's weights as the new base. A version whose adapter could not be merged (prompt
    learning, bottleneck adapters) has no merged weights to start from."""
    folder = model_folder(start)
    if (folder / EXPORTED_ADAPTER).is_dir():
        raise UserError(f"model.source: champion: version {start.label} keeps its adapter apart from the base (its "
                        "method cannot be merged), so it has no merged weights to continue from; start from a "
                        "version trained with lora, dora, ia3, loha, lokr or full")
    return folder


def continued_adapter(start: ModelRef, tmp: Path, classes: list[str] | None) -> tuple[Path, Path]:
    """(base folder, adapter folder) to keep training the version's own adapter: a version of merged weights keeps
    its adapter in `trained_adapter/`, and its base is recovered by subtracting it (written to `base/` of the init
    output); one whose adapter cannot be merged keeps the base's weights with the adapter in `adapter/`."""
    folder = model_folder(start)
    if (folder / EXPORTED_ADAPTER).is_dir():
        return folder, folder / EXPORTED_ADAPTER
    if not (folder / TRAINED_ADAPTER).is_dir():
        raise UserError(f"model.start: adapter: version {start.label} has no adapter to continue (trained with full "
                        "fine-tuning, or registered before ftflow kept adapters); use start: merged")
    base = unmerged_base(folder, folder / TRAINED_ADAPTER, classes)
    base.save_pretrained(tmp / "base", safe_serialization=True)
    load_tokenizer(folder).save_pretrained(tmp / "base")
    return tmp / "base", folder / TRAINED_ADAPTER


# A reward model is a sequence classifier with one output: the score of a (prompt, answer) text.
REWARD_CLASSES = ["reward"]


def model_classes(train: pd.DataFrame, task: str) -> list[str] | None:
    """The classifier's outputs (sorted classes of the train split, or the reward model's one), or None for a
    causal LM."""
    if task == "classification":
        return sorted(train[LABEL_COLUMN].astype(str).unique())
    return REWARD_CLASSES if task == "reward_model" else None


def corpus(train: pd.DataFrame) -> list[str]:
    """The train split's text, whatever its format, for training the scratch tokenizer."""
    if "messages" in train:
        return [m["content"] for chat in train["messages"] for m in json.loads(chat)]
    columns = [c for c in ("prompt", "completion", "text", "chosen", "rejected") if c in train]
    return train[columns].astype(str).agg("".join, axis=1).tolist()
