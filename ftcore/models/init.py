"""init stage: produce the base model folder and, for adapter methods, the initial (untrained) adapter."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftcore.config import MethodConfig, ModelConfig
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir, hash_obj
from ftcore.models.load import load_tokenizer
from ftcore.models.peft_methods import (
    apply_method,
    load_base,
    parameter_counts,
    quantization_config,
    write_method_spec,
)
from ftcore.models.scratch import build_model, train_tokenizer
from ftcore.outputs import DatasetOutput, ModelOutput


def init_model(model_cfg: ModelConfig, method_cfg: MethodConfig, dataset: DatasetOutput, out_dir: Path) -> ModelOutput:
    with atomic_dir(out_dir) as tmp:
        if model_cfg.source == "scratch":
            base_path = out_dir / "base"
            model, tokenizer = _build_from_scratch(model_cfg, dataset)
            model.save_pretrained(tmp / "base", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "base")
            if quantization_config(method_cfg) is not None:
                # The base stays saved in full precision (4-bit weights cannot be saved as a base to merge into);
                # the adapter is built on the base as the train stage will load it.
                model = load_base(tmp / "base", method_cfg)
        else:
            base_path = _resolve_pretrained(model_cfg.name_or_path)
            model = load_base(base_path, method_cfg, model_cfg.trust_remote_code)
            tokenizer = load_tokenizer(base_path, model_cfg.trust_remote_code)
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
        metrics={
            "total_params": total,
            "trainable_params": trainable,
            "trainable_fraction": trainable / total,
            "vocab_size": len(tokenizer),
        },
    )


def _build_from_scratch(cfg: ModelConfig, dataset: DatasetOutput):
    train = pd.read_parquet(dataset.splits["train"])
    tokenizer = train_tokenizer((train["prompt"] + train["completion"]).tolist(), cfg.scratch.vocab_size)
    return build_model(cfg.scratch, tokenizer), tokenizer


def _resolve_pretrained(name_or_path: str) -> Path | str:
    """A local folder stays a path; anything else is a hub id, loaded where a hub is reachable."""
    path = Path(name_or_path).expanduser()
    return path.resolve() if path.exists() else name_or_path
