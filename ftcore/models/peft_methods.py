"""Fine-tuning methods (docs/methods.md): `full` trains every weight; the others wrap the base with a PEFT adapter.

The method is applied in the init stage so that the initial adapter (seeded) is part of the versioned init output
and the train stage only loads and trains it. The init stage also saves the method's spec (`method.json`) with it:
the train stage reads it back to load the model to train (`load_trainable`: a 4-bit base for qlora) and to write
the trained model (`export_model`: merged when the adapter merges into the base, `can_merge`).

PEFT is imported inside the functions: importing this module (the CLI does, through the init task) stays cheap.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from ftcore.errors import UserError, first_line
from ftcore.models.config import (
    BottleneckAdapterMethod,
    DoraMethod,
    FullMethod,
    Ia3Method,
    LohaMethod,
    LokrMethod,
    LoraMethod,
    LycorisMethod,
    MethodConfig,
    PrefixMethod,
    PromptLearningMethod,
    PromptMethod,
    PTuningMethod,
    QLoraMethod,
    VisionParts,
    bitsandbytes_installed,
)
from ftcore.models.load import folder_sees_images, load_model, reload_model, runs_own_code, saved_classes
from ftcore.models.vision import linear_layers, part_modules

SPEC_FILE = "method.json"
EXPORTED_ADAPTER = "adapter"  # in an exported model folder: an adapter that cannot be merged, next to the base
# In an exported folder of merged weights: the trained adapter itself, so a later run can continue training it
# (model.start: adapter) on the base recovered by subtracting it again (`unmerged_base`).
TRAINED_ADAPTER = "trained_adapter"
# Methods whose trained update is a change of the linear weights, so it folds into them: the merged model is a
# plain transformers model. Prompt learning adds virtual tokens and bottleneck adapters add layers: nothing to fold.
_MERGEABLE = (LoraMethod, Ia3Method, LycorisMethod)


def apply_method(model, cfg: MethodConfig, tokenizer=None, vision: VisionParts | None = None):
    """Return the model to train: the model itself for `full`, a PeftModel for adapter methods. On a
    vision-language model, `vision` says which parts the adapter goes on (`on_vision_parts`).

    For qlora, `model` must come from `load_base` (4-bit). `tokenizer` is needed only by prompt with init: text.
    """
    if isinstance(cfg, FullMethod):
        return model
    import torch
    from peft import get_peft_model

    torch.manual_seed(cfg.seed)
    try:  # a model without the layers a method looks for, or target_modules that name none of its modules
        peft_config = _peft_config(cfg, model)
        if vision is not None:
            on_vision_parts(peft_config, model, vision)
        wrapped = get_peft_model(model, peft_config)
    except ValueError as e:
        raise UserError(f"method: {cfg.name} does not fit this model: {first_line(e)}") from None
    if isinstance(cfg, PromptMethod) and cfg.init == "text":
        _init_prompt_from_text(wrapped, cfg.init_text, tokenizer)
    return wrapped


def on_vision_parts(peft_config, model, vision: VisionParts) -> None:
    """An adapter on the linear layers of the parts train.vision trains (PEFT's all-linear would take the vision
    tower's too), and a trained projector whole beside it. Only where the method names all-linear: explicit
    target_modules are the recipe's own choice."""
    if getattr(peft_config, "target_modules", None) != "all-linear":
        return
    adapted = [part for part in vision.trained() if part != "projector"]
    if not adapted:
        raise UserError("train.vision: an adapter goes on the language model or the vision tower, and both are "
                        "frozen; to train only the projector use method: full")
    peft_config.target_modules = linear_layers(model, adapted)
    if vision.projector:
        peft_config.modules_to_save = [part_modules(model)["projector"]]


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total). A 4-bit weight is stored two values per byte; it counts as the values, as PEFT does."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def is_classifier(model) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def can_continue(cfg: MethodConfig) -> bool:
    """Whether a registered version's adapter of this method can be trained further (model.start: adapter): the
    adapters whose delta subtracts exactly from merged weights, and bottleneck adapters, which are kept apart. DoRA's
    merge rescales by a norm that is not saved; prompt learning saves only its final virtual tokens."""
    return isinstance(cfg, (*_MERGEABLE, BottleneckAdapterMethod)) and not isinstance(cfg, DoraMethod)


def can_merge(cfg: MethodConfig) -> bool:
    """Whether the trained adapter folds into the base weights (lora, dora, qlora, ia3, loha, lokr). Prompt learning
    (prefix, prompt, p_tuning) and bottleneck adapters cannot be merged; `full` has no adapter to merge."""
    return isinstance(cfg, _MERGEABLE)


# ---------------------------------------------------------------------------------------------------------------
# The spec the init stage leaves for the train stage


def write_method_spec(cfg: MethodConfig, folder: Path) -> None:
    (folder / SPEC_FILE).write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")


def read_method_spec(folder: Path) -> MethodConfig:
    return TypeAdapter(MethodConfig).validate_json((folder / SPEC_FILE).read_text())


# ---------------------------------------------------------------------------------------------------------------
# Loading the base and the adapter, merging, exporting


def quantization_config(cfg: MethodConfig, keep: list[str] | None = None):
    """The BitsAndBytesConfig the base loads with (qlora), or None: the base loads in full precision. `keep`: the
    modules left in full precision (None: those transformers keeps by default, the output head)."""
    if not isinstance(cfg, QLoraMethod):
        return None
    if not bitsandbytes_installed():
        raise UserError("method.name: qlora needs the bitsandbytes package: pip install 'bitsandbytes>=0.50,<0.51'")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype),
        llm_int8_skip_modules=keep,  # despite the name, the 4-bit quantiser's too
    )


def vision_parts_kept(path: str | Path, trust_remote_code: bool = False) -> list[str] | None:
    """A vision-language model's vision tower and projector, with what transformers keeps in full precision by
    default (the output head), for a 4-bit base; None for a text model. The projector trains whole beside the adapter
    (a 4-bit weight cannot), and a tower quantised to 4 bits would blur what the language model is trained on, so
    only the language model is quantised."""
    if not folder_sees_images(path):
        return None
    from transformers import AutoConfig
    from transformers.quantizers.base import get_keys_to_not_convert

    from ftcore.models.meta import architecture_class, meta_model

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model = meta_model(config, architecture_class(config), trust_remote_code)
    parts = part_modules(model)
    return [*get_keys_to_not_convert(model), *(parts[part] for part in ("vision_tower", "projector") if part in parts)]


def load_base(path: str | Path, cfg: MethodConfig, trust_remote_code: bool = False,
              classes: list[str] | None = None):
    """The base as the method trains it: as saved, or for qlora quantised to 4 bits while loading and prepared for
    k-bit training (frozen, norms and head in float32). With `classes`, a sequence classifier (`load_model`)."""
    if not isinstance(cfg, QLoraMethod):
        return load_model(path, trust_remote_code, classes)
    quantization = quantization_config(cfg, vision_parts_kept(path, trust_remote_code))
    import torch
    from peft import prepare_model_for_kbit_training

    # bitsandbytes places 4-bit weights when loading: on the GPU when there is one, else on the CPU.
    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"
    model = load_model(path, trust_remote_code, classes, quantization_config=quantization, device_map=device_map,
                       dtype=torch.float32)
    _new_layers_in_full_precision(model)
    _keep_the_trainable_4bit_kernel(model)
    # Gradient checkpointing is the trainer's setting (train.*), not the method's: PEFT would turn it on here.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _new_layers_in_full_precision(model) -> None:
    """A layer the checkpoint lacks (an encoder's pooler, absent from its masked-LM checkpoint) is created while
    loading as a 4-bit layer holding a plain full-precision weight, which PEFT cannot wrap ('Parameter' object has
    no attribute 'compress_statistics'). Such a layer becomes the nn.Linear it is, in full precision, like the new
    head."""
    import bitsandbytes as bnb
    from torch import nn

    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit) and not isinstance(module.weight, bnb.nn.Params4bit):
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=module.weight.device, dtype=module.weight.dtype)
            linear.weight = module.weight
            linear.bias = module.bias
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)


def _keep_the_trainable_4bit_kernel(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight in place at its first forward without
    gradients (an evaluation) and from then on runs a kernel without a backward: training after an evaluation gets
    wrong gradients silently (measured on the test model: an evaluation at step 10 of 20 left the loss at 3.63
    instead of 1.71), and the repacking fails outright unless in_features is a multiple of 64. Every layer keeps
    the generic kernel, the one training uses."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_trainable(base_path: str | Path, adapter_path: str | Path | None, cfg: MethodConfig, tokenizer,
                   classes: list[str] | None = None):
    """What the train stage trains: the base as the method needs it (`load_base`, with its own code where the init
    stage loaded it so: `runs_own_code`) with the init stage's adapter.

    Prompt-learning adapters are built again from the spec instead: PEFT refuses to load them trainable, and saves
    only the virtual tokens' final embeddings, not the encoder that produces them (p_tuning's MLP or LSTM,
    prefix_projection's MLP), which training must keep reparameterising. The seed gives the same weights the init
    stage saved.
    """
    model = load_base(base_path, cfg, runs_own_code(base_path), classes)
    text_config = model.config.get_text_config()  # a vision-language model's language model holds its ids
    if text_config.pad_token_id is None:  # a classifier finds each sequence's last token by the padding
        text_config.pad_token_id = tokenizer.pad_token_id
    if isinstance(cfg, FullMethod):
        return model
    if isinstance(cfg, PromptLearningMethod):
        return apply_method(model, cfg, tokenizer)
    return attach_adapter(model, adapter_path, trainable=True)


def attach_adapter(model, adapter_path: str | Path, trainable: bool):
    """`model` with the adapter saved at `adapter_path` (any method, the bottleneck adapter included)."""
    from peft import PeftModel

    import ftcore.models.adapters  # noqa: F401  registers the bottleneck method with PEFT before it loads one

    return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=trainable)


def save_adapter(model, folder: Path) -> None:
    """`model`'s adapter, written byte for byte the same wherever the same adapter is saved. PEFT writes its
    set-valued settings (target_modules, ...) as lists in set order, which PYTHONHASHSEED changes from process to
    process: the same adapter would get another content hash in each, and a re-run after a kill would miss the
    checkpoints kept under the train folder that the hash names."""
    model.save_pretrained(folder)
    set_valued = {key for config in model.peft_config.values() for key, value in vars(config).items()
                  if isinstance(value, set)}
    for path in folder.rglob("adapter_config.json"):
        config = json.loads(path.read_text())
        path.write_text(json.dumps({k: sorted(v) if k in set_valued and isinstance(v, list) else v
                                    for k, v in config.items()}, indent=2, sort_keys=True))


def merged_model(base_path: str | Path, adapter_path: str | Path, classes: list[str] | None = None):
    """The full-precision base with the trained adapter folded into its weights. The base is loaded again rather
    than merged in place: a qlora base is 4-bit, and merging into it would re-quantise the result."""
    model = attach_adapter(reload_model(base_path, classes), adapter_path, trainable=False)
    _settle_trained_copies(model)
    return model.merge_and_unload()


def _settle_trained_copies(model) -> None:
    """Put each module PEFT trained whole (modules_to_save: a classifier's head) in place of its wrapper. PEFT's
    IA3, LoHa and LoKr merges look for a `weight` on the wrapper, which a head that is a block of layers rather than
    one Linear lacks (RoBERTa's RobertaClassificationHead); LoRA's merge does this itself."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.modules_to_save[module.active_adapters[0]])


def export_model(cfg: MethodConfig, base_path: str | Path, adapter_path: Path, out: Path,
                 classes: list[str] | None = None) -> None:
    """Write the trained model as one folder: the merged weights when the adapter merges, else the base weights
    with the adapter in `out/adapter` (load it with `load_exported`). A classifier's trained head is part of the
    adapter (PEFT's modules_to_save), so both forms carry it."""
    if can_merge(cfg):
        merged_model(base_path, adapter_path, classes).save_pretrained(out, safe_serialization=True)
        shutil.copytree(adapter_path, out / TRAINED_ADAPTER)
        return
    reload_model(base_path, classes).save_pretrained(out, safe_serialization=True)
    shutil.copytree(adapter_path, out / EXPORTED_ADAPTER)


def unmerged_base(path: Path, adapter_path: Path, classes: list[str] | None = None):
    """The base that `export_model` merged the adapter at `adapter_path` into: the exported weights with the
    adapter's delta subtracted (in float32, exact up to rounding)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = attach_adapter(reload_model(path, classes), adapter_path, trainable=False)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merged_adapters = list(module.active_adapters)  # marks the delta as already in the weights
    model.unmerge_adapter()
    return model.unload()


def load_exported(path: Path):
    """A model folder written by `export_model`: with its adapter attached when it could not be merged."""
    model = reload_model(path, saved_classes(path))
    if (path / EXPORTED_ADAPTER).is_dir():
        model = attach_adapter(model, path / EXPORTED_ADAPTER, trainable=False)
    return model


# ---------------------------------------------------------------------------------------------------------------
# PEFT configs


def _peft_config(cfg: MethodConfig, model) -> Any:
    import peft

    common = {"task_type": "SEQ_CLS" if is_classifier(model) else "CAUSAL_LM"}
    match cfg:
        case LoraMethod():  # lora, dora and qlora (whose base is already 4-bit)
            return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha or 2 * cfg.r, lora_dropout=cfg.dropout,
                                   target_modules=cfg.target_modules, target_parameters=cfg.target_parameters or None,
                                   use_dora=isinstance(cfg, DoraMethod), **common)
        case Ia3Method():
            targets, feedforward = _ia3_modules(cfg, model)
            return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, **common)
        case LohaMethod() | LokrMethod():
            config_class = peft.LoHaConfig if isinstance(cfg, LohaMethod) else peft.LoKrConfig
            return config_class(r=cfg.r, alpha=cfg.alpha or cfg.r, rank_dropout=cfg.rank_dropout,
                                module_dropout=cfg.module_dropout, target_modules=cfg.target_modules, **common)
        case PrefixMethod():
            return peft.PrefixTuningConfig(
                num_virtual_tokens=cfg.num_virtual_tokens, prefix_projection=cfg.prefix_projection,
                encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size, **_prefix_heads(model),
                **common)
        case PromptMethod():
            # Always PEFT's random init; a text init is copied in afterwards (_init_prompt_from_text).
            return peft.PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, prompt_tuning_init="RANDOM",
                                           **common)
        case PTuningMethod():
            return peft.PromptEncoderConfig(
                num_virtual_tokens=cfg.num_virtual_tokens, encoder_hidden_size=cfg.encoder_hidden_size,
                encoder_reparameterization_type=cfg.encoder_reparameterization_type.upper(), **common)
        case BottleneckAdapterMethod():
            return _bottleneck_config(cfg, model, common)
    raise TypeError(f"no PEFT config for method {cfg.name!r}")


def _prefix_heads(model) -> dict[str, int]:
    """The key/value heads a prefix needs where the config does not say them as `num_key_value_heads` (which PEFT
    reads): Falcon's multi-query attention keeps one key/value head whatever its config's `num_kv_heads`, and only
    its attention modules know it. Empty where the config says it, or no module tells."""
    config = model.config.get_text_config()
    if getattr(config, "num_key_value_heads", None) is not None:
        return {}
    heads = {m.num_kv_heads for m in model.modules() if isinstance(getattr(m, "num_kv_heads", None), int)}
    if len(heads) != 1:
        return {}
    kv_heads = heads.pop()
    return {"num_attention_heads": kv_heads, "token_dim": kv_heads * config.hidden_size // config.num_attention_heads}


def _ia3_modules(cfg: Ia3Method, model) -> tuple[list[str] | None, list[str] | None]:
    """The recipe's IA3 modules; by default PEFT's list for the architecture (None: PEFT picks it), unless PEFT
    has none or one naming modules this model lacks (Mixtral's `w2`, now fused experts): then the attention
    inputs and MLP outputs found in the model's own modules (ftcore/models/layers.py)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

    if cfg.target_modules is not None:
        return cfg.target_modules, cfg.feedforward_modules
    names = [name for name, _ in model.named_modules()]
    listed = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model.config.model_type)
    if listed and all(any(name == t or name.endswith(f".{t}") for name in names) for t in listed):
        return None, None
    from ftcore.models.layers import ia3_targets

    return ia3_targets(model)


def _bottleneck_config(cfg: BottleneckAdapterMethod, model, common: dict[str, Any]):
    from ftcore.models.adapters import BottleneckConfig
    from ftcore.models.layers import residual_outputs

    # Default: after every block's attention and MLP (the Houlsby placement), found in the model's own modules.
    return BottleneckConfig(bottleneck_size=cfg.bottleneck_size, non_linearity=cfg.non_linearity,
                            adapter_dropout=cfg.dropout, target_modules=cfg.target_modules or residual_outputs(model),
                            **common)


def _init_prompt_from_text(model, text: str | None, tokenizer) -> None:
    """Start the virtual tokens at the embeddings of `text`'s tokens, repeated or cut to fit.

    This is what PEFT's `prompt_tuning_init="TEXT"` does, done here because PEFT repeats it from a tokenizer path
    stored in the adapter config every time the adapter is loaded for training, and at init time the scratch
    tokenizer lives in a temporary folder. The saved adapter carries the initialised embeddings instead.
    """
    import torch

    if text is None or tokenizer is None:
        raise ValueError("prompt init: text needs init_text and the tokenizer")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    embedding = model.prompt_encoder[model.active_adapter].embedding
    n = embedding.num_embeddings
    ids = (ids * (n // len(ids) + 1))[:n]
    with torch.no_grad():
        words = model.get_input_embeddings()(torch.tensor(ids, device=embedding.weight.device))
        embedding.weight.copy_(words.to(embedding.weight.dtype))
