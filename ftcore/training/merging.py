"""A `merge:` recipe's train stage (docs/merging.md): registered LoRA adapters that share a base, combined into one
adapter with PEFT's weighted-adapter merge instead of trained. The output is laid out as training's (the merged
weights in `model/`, the adapter in `adapter/` and `model/trained_adapter/`), so what follows (evaluate, the gate,
registration, the exports, `model.source: champion` with `start: adapter` to train on top of it) treats it as any
trained adapter."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ftcore.errors import UserError
from ftcore.models.load import reload_model, reload_tokenizer
from ftcore.models.peft_methods import TRAINED_ADAPTER, unmerged_base
from ftcore.models.prompting import Prompting, read_prompting
from ftcore.models.registered import ModelRef, model_folder
from ftcore.outputs import ModelOutput
from ftcore.training.config import MergeConfig

log = logging.getLogger(__name__)
# How far a source's base (its merged weights less its adapter, exact up to float32 rounding) may be from the first
# source's and still be the same base: rounding leaves ~1e-7; another base differs by its initialisation's scale.
SAME_BASE_ATOL = 1e-5


class MergeJob(BaseModel):
    """The pinned sources (by task) and the merge section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: dict[str, ModelRef]  # task -> the pinned version, in merge.sources' order
    config: MergeConfig


def merged_adapter(job: MergeJob, base: ModelOutput):
    """(the model with the combined adapter as its only one, how the sources were prompted, the metrics)."""
    folders = {task: model_folder(ref) for task, ref in job.sources.items()}
    adapters = {task: source_adapter(job.sources[task], folder) for task, folder in folders.items()}
    model, tokenizer = reload_model(base.base_path), reload_tokenizer(base.base_path)
    for task, folder in list(folders.items())[1:]:
        check_same_base(model, tokenizer, job.sources[task], folder, next(iter(job.sources.values())))
    combined = combine(model, list(adapters.values()), job.config)
    rank = int(combined.peft_config["default"].r)
    metrics = {"merged_sources": len(adapters), "merged_rank": rank}
    log.info("merged %s (%s%s) into one rank-%d adapter", ", ".join(ref.label for ref in job.sources.values()),
             job.config.combination, f", density {job.config.density:g}" if job.config.density else "", rank)
    return combined, sources_prompting(folders, tokenizer), metrics


def source_adapter(ref: ModelRef, folder: Path) -> Path:
    """The version's trained LoRA adapter (kept beside its merged weights when it was registered)."""
    adapter = folder / TRAINED_ADAPTER
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"merge.sources: {ref.uri} has no adapter to merge (trained with full fine-tuning, or a "
                        "method whose adapter cannot be merged); merge versions trained with method lora")
    config = json.loads((adapter / "adapter_config.json").read_text())
    kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
    if kind != "LORA":
        raise UserError(f"merge.sources: {ref.uri} has a {kind} adapter; merging combines LoRA adapters (method lora)")
    return adapter


def check_same_base(base, tokenizer, ref: ModelRef, folder: Path, first: ModelRef) -> None:
    """Refuse a source whose own base (its merged weights less its adapter) is not the first source's: adapters
    trained on different bases do not add up to anything."""
    import torch

    own = unmerged_base(folder, folder / TRAINED_ADAPTER).state_dict()
    expected = base.state_dict()
    if own.keys() != expected.keys() or any(own[k].shape != expected[k].shape for k in expected):
        raise UserError(f"merge.sources: {ref.uri} and {first.uri} were trained on different model architectures; "
                        "merge versions trained from one base")
    name, gap = max(((k, float((own[k].float() - expected[k].float()).abs().max())) for k in expected),
                    key=lambda item: item[1])
    if gap > SAME_BASE_ATOL or not all(torch.equal(own[k], expected[k]) for k in expected
                                       if not expected[k].is_floating_point()):
        raise UserError(f"merge.sources: {ref.uri} was not trained on the base of {first.uri} (their base weights "
                        f"differ by up to {gap:.3g} in {name}); merge versions trained from one base")
    if reload_tokenizer(folder).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"merge.sources: {ref.uri} and {first.uri} have different tokenizers; merge versions "
                        "trained from one base")


def combine(base, adapters: list[Path], cfg: MergeConfig):
    """`base` with the adapters combined by PEFT's add_weighted_adapter into one adapter, `default`, the only one
    left (the sources' are deleted so that saving writes the merged one alone)."""
    import torch
    from peft import PeftModel

    names = [f"source{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:], strict=True):
        model.load_adapter(str(path), adapter_name=name)
    torch.manual_seed(cfg.seed)  # dare's random draw
    try:
        model.add_weighted_adapter(names, cfg.source_weights, "default", combination_type=cfg.combination,
                                   density=cfg.density)
    except ValueError as e:  # e.g. linear and ties over adapters of different ranks
        raise UserError(f"merge.combination: {cfg.combination}: {e}; svd and cat combine adapters of any rank") \
            from None
    model.set_adapter("default")
    for name in names:
        model.delete_adapter(name)
    return model


def sources_prompting(folders: dict[str, Path], tokenizer) -> Prompting:
    """How the merged model is asked: the sources' way where they agree, else as given (each task's rows carry
    their own template in the test split)."""
    records = [read_prompting(folder, tokenizer) for folder in folders.values()]
    return records[0] if all(record == records[0] for record in records) else Prompting(format="raw")
