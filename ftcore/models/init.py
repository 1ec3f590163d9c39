"""init stage: produce the base model folder and, for adapter methods, the initial (untrained) adapter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ftcore.columns import IMAGE_PLACEHOLDER, LABEL_COLUMN
from ftcore.errors import UserError
from ftcore.fs import atomic_dir
from ftcore.hashing import hash_dir, hash_obj
from ftcore.models.config import LoraMethod, MethodConfig, ModelConfig, VisionParts
from ftcore.models.folders import check_vocabulary, fit_gguf_vocabulary, pretrained_source
from ftcore.models.load import (
    load_model,
    load_tokenizer,
    reload_processing,
    reload_tokenizer,
    runs_own_code,
)
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
from ftcore.models.scratch import build_model, build_vision_language, train_tokenizer
from ftcore.models.support import check_fits
from ftcore.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Objective
from ftcore.outputs import DatasetOutput, ModelOutput


class InitJob(BaseModel):
    """The init stage's input: the model and method sections, the cleaned dataset (the scratch tokenizer trains on
    its train split, a classifier's classes come from it), the objective (which head) and, for source champion,
    the pinned version to start from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig = ModelConfig()
    method: MethodConfig = LoraMethod()
    dataset: DatasetOutput
    objective: Objective = OBJECTIVES[DEFAULT_OBJECTIVE]
    start: ModelRef | None = None
    vision: VisionParts | None = None  # a vision-language objective: the parts an adapter goes on (train.vision)


@dataclass
class Base:
    """The base model in memory, its tokenizer, where its weights are, and the adapter to continue (if any)."""

    model: object
    tokenizer: object
    path: Path
    adapter: Path | None = None


def init_stage(job: InitJob, out_dir: Path) -> ModelOutput:
    """The base (built, a pretrained folder, or for source champion the pinned version `start`) wrapped with the
    method. A classifier's base gets a head with one output per class of the train split (sorted, so ids are
    stable); a reward model's one output."""
    train = pd.read_parquet(job.dataset.splits["train"])
    classes = model_classes(train, job.objective)
    with atomic_dir(out_dir) as tmp:
        base = base_model(job, train, classes, tmp, out_dir)
        check_fits(base.model.config, job.method, job.objective)
        text_config = base.model.config.get_text_config()
        if text_config.pad_token_id is None:
            text_config.pad_token_id = base.tokenizer.pad_token_id
        wrapped = (attach_adapter(base.model, base.adapter, trainable=True) if base.adapter
                   else apply_method(base.model, job.method, base.tokenizer, job.vision))
        adapter_path = None
        if wrapped is not base.model:
            save_adapter(wrapped, tmp / "adapter")
            adapter_path = out_dir / "adapter"
        write_method_spec(job.method, tmp)
        trainable, total = parameter_counts(wrapped)
    return ModelOutput(
        path=out_dir,
        content_hash=hash_obj(content_identity(job, base.path, out_dir)),
        base_path=base.path,
        adapter_path=adapter_path,
        method=job.method.name,
        classes=classes or [],
        started_from=job.start.label if job.start else None,
        metrics={"total_params": total, "trainable_params": trainable, "trainable_fraction": trainable / total,
                 "vocab_size": len(base.tokenizer)},
    )


def base_model(job: InitJob, train: pd.DataFrame, classes: list[str] | None, tmp: Path, out_dir: Path) -> Base:
    """The base the method wraps: built from config (saved into `base/`), the champion's own base and adapter
    (model.start adapter), or a folder's weights (a pretrained model, or the champion's merged weights)."""
    cfg, method, start = job.model, job.method, job.start
    if cfg.source == "scratch":
        tokenizer = train_tokenizer(corpus(train), cfg.scratch.vocab_size, cfg.scratch)
        if cfg.scratch.sees_images:
            model, processing = build_vision_language(cfg.scratch, tokenizer)
        else:
            model, processing = build_model(cfg.scratch, tokenizer, classes), tokenizer
        model.save_pretrained(tmp / "base", safe_serialization=True)
        processing.save_pretrained(tmp / "base")
        if quantization_config(method) is not None:
            # The base stays saved in full precision (4-bit weights cannot be saved as a base to merge into); the
            # adapter is built on the base as the train stage will load it.
            model = load_base(tmp / "base", method, classes=classes)
        return Base(model, tokenizer, out_dir / "base")
    if start is not None and cfg.start == "adapter":
        load_from, adapter = continued_adapter(start, tmp, classes)
        path = out_dir / "base" if load_from == tmp / "base" else load_from
        return Base(load_base(load_from, method, runs_own_code(load_from), classes), reload_tokenizer(load_from),
                    path, adapter)
    if start is not None:  # a registered version runs its own code where the recipe that trained it allowed it
        path = starting_folder(start)
        return Base(load_base(path, method, runs_own_code(path), classes), reload_tokenizer(path), path)
    return pretrained_base(job, classes, tmp, out_dir)


def pretrained_base(job: InitJob, classes: list[str] | None, tmp: Path, out_dir: Path) -> Base:
    """A pretrained folder, checked from its files first (ftcore/models/folders.py) and referenced in place. A GGUF
    file or pickled weights load once here and are saved as a safetensors base in `base/`, which every later stage
    loads like any other."""
    cfg, method = job.model, job.method
    source = pretrained_source(cfg)
    tokenizer = load_tokenizer(source.location, source.own_code, source.gguf_file)
    if not source.converted:
        model = load_base(source.location, method, source.own_code, classes)
        check_vocabulary(model, tokenizer, source.label)
        return Base(model, tokenizer, Path(source.location))
    model = load_model(source.location, source.own_code, classes, gguf_file=source.gguf_file,
                       pickle=source.pickle_only)
    if source.gguf_file is not None:
        fit_gguf_vocabulary(model, tokenizer)
    check_vocabulary(model, tokenizer, source.label)
    model.save_pretrained(tmp / "base", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "base")
    # The method wraps the base as the train stage will load it (for qlora: 4 bits in memory, full precision saved).
    return Base(load_base(tmp / "base", method, runs_own_code(tmp / "base"), classes), tokenizer, out_dir / "base")


def content_identity(job: InitJob, base_path: Path, out_dir: Path) -> dict[str, str]:
    """What the output's content hash covers: the folder written, and the base it references in place."""
    content = {"out": hash_dir(out_dir)}
    if job.model.source == "pretrained" and not base_path.is_relative_to(out_dir):  # not a base converted into it
        content["base"] = hash_dir(base_path) if base_path.is_dir() else str(base_path)
    elif job.start is not None:
        content["base"] = job.start.fingerprint
    return content


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
    reload_processing(folder).save_pretrained(tmp / "base")
    return tmp / "base", folder / TRAINED_ADAPTER


# A reward model is a sequence classifier with one output: the score of a (prompt, answer) text.
REWARD_CLASSES = ["reward"]


def model_classes(train: pd.DataFrame, objective: Objective) -> list[str] | None:
    """The classifier's outputs (sorted classes of the train split, or the reward model's one), or None for a
    causal LM."""
    match objective.head:
        case "classes":
            return sorted(train[LABEL_COLUMN].astype(str).unique())
        case "reward":
            return REWARD_CLASSES
    return None


def corpus(train: pd.DataFrame) -> list[str]:
    """The train split's text, whatever its format, for training the scratch tokenizer (image placeholders left
    out: the image token is a special token of its own)."""
    if "messages" in train:
        return [m["content"].replace(IMAGE_PLACEHOLDER, "") for chat in train["messages"] for m in json.loads(chat)]
    columns = [c for c in ("prompt", "completion", "text", "chosen", "rejected") if c in train]
    return train[columns].astype(str).agg("".join, axis=1).tolist()
