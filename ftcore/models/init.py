"""init stage: produce the base model folder and, for adapter methods, the initial (untrained) adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ftcore.config import LABEL_COLUMN, MethodConfig, ModelConfig
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir, hash_obj
from ftcore.models.load import load_tokenizer, resolve_pretrained
from ftcore.models.peft_methods import (
    apply_method,
    load_base,
    parameter_counts,
    quantization_config,
    write_method_spec,
)
from ftcore.models.scratch import build_model, train_tokenizer
from ftcore.outputs import DatasetOutput, ModelOutput


def init_model(model_cfg: ModelConfig, method_cfg: MethodConfig, dataset: DatasetOutput, out_dir: Path,
               task: str = "sft") -> ModelOutput:
    """The base (built, or a pretrained folder) wrapped with the method. For task classification the base gets a
    classification head with one output per class of the train split (sorted, so ids are stable)."""
    train = pd.read_parquet(dataset.splits["train"])
    classes = sorted(train[LABEL_COLUMN].astype(str).unique()) if task == "classification" else None
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
        else:
            base_path = resolve_pretrained(model_cfg.name_or_path)
            model = load_base(base_path, method_cfg, model_cfg.trust_remote_code, classes)
            tokenizer = load_tokenizer(base_path, model_cfg.trust_remote_code)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        wrapped = apply_method(model, method_cfg, tokenizer)
        adapter_path = None
        if wrapped is not model:
            wrapped.save_pretrained(tmp / "adapter")
            adapter_path = out_dir / "adapter"
        write_method_spec(method_cfg, tmp)
        trainable, total = parameter_counts(wrapped)
    content = {"out": hash_dir(out_dir)}
    if model_cfg.source == "pretrained":
        content["base"] = hash_dir(base_path) if Path(base_path).is_dir() else str(base_path)
    return ModelOutput(
        path=out_dir,
        content_hash=hash_obj(content),
        base_path=Path(base_path),
        adapter_path=adapter_path,
        method=method_cfg.name,
        classes=classes or [],
        metrics={
            "total_params": total,
            "trainable_params": trainable,
            "trainable_fraction": trainable / total,
            "vocab_size": len(tokenizer),
        },
    )


def corpus(train: pd.DataFrame) -> list[str]:
    """The train split's text, whatever its format, for training the scratch tokenizer."""
    if "messages" in train:
        return [m["content"] for chat in train["messages"] for m in json.loads(chat)]
    columns = [c for c in ("prompt", "completion", "text") if c in train]
    return train[columns].astype(str).agg("".join, axis=1).tolist()
