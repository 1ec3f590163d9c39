"""A model with shapes only, built from its config on PyTorch's `meta` device: every parameter has a shape but no
storage, so a 7B model costs milliseconds and no memory, and nothing is read but the config. `ftflow plan`
(ftcore/planning/shape.py) and `ftflow inspect` (ftcore/models/inspect.py) count and probe models this way."""

from __future__ import annotations

from typing import Any

from ftcore.errors import UserError


def meta_model(config, model_class=None, trust_remote_code: bool = False):
    """The model `config` describes, on the meta device: built as `model_class` (a transformers model class, e.g.
    the one `architecture_class` picks), or as AutoModelForCausalLM builds it."""
    import torch

    from ftcore.models.load import MODEL_BUILD_LOCK

    with MODEL_BUILD_LOCK, torch.device("meta"):
        if model_class is None:
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        return model_class._from_config(config)  # what the Auto classes' from_config call


def architecture_class(config):
    """The transformers class of the model `config` describes: for a config built by a model's own code, the class
    that code defines (`_own_class`); else the first of its `architectures` that transformers has, else (a GGUF
    file's config names none) the image-text-to-text model of a vision-language model, the causal LM of a decoder,
    the masked LM of an encoder, or the bare model."""
    import transformers
    from transformers.models.auto import modeling_auto

    from ftcore.models.load import needs_own_code
    from ftcore.models.support import ModelKind

    if needs_own_code(config.to_dict()) and (own := _own_class(config)) is not None:
        return own
    for name in config.architectures or ():
        if (cls := getattr(transformers, name, None)) is not None:
            return cls
    heads = [modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if ModelKind.of(config).decoder
             else modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES]
    if getattr(config, "vision_config", None) is not None:
        heads.insert(0, modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    for mapping in (*heads, modeling_auto.MODEL_MAPPING_NAMES):
        name = mapping.get(config.model_type)
        if isinstance(name, tuple | list):
            name = name[0]
        if name and (cls := getattr(transformers, name, None)) is not None:
            return cls
    raise UserError(f"MODEL: transformers {transformers.__version__} has no model class for model_type "
                    f"{config.model_type!r}")


def _own_class(config):
    """The class that a model's own code (config.json's auto_map) defines for one of its `architectures`, else its
    causal LM; None where the code names neither. Only for a config built by the same code: whoever loaded it had
    allowed the folder's code to run already."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = config.auto_map
    named = [ref for ref in auto_map.values() if isinstance(ref, str) and ref.rsplit(".", 1)[-1] in
             (config.architectures or ())]
    ref = named[0] if named else auto_map.get("AutoModelForCausalLM")
    return get_class_from_dynamic_module(ref, config._name_or_path) if ref else None


def count_params(model) -> tuple[int, int]:
    """(trainable, total); parameters() yields a tied weight once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def linear_layers(model) -> list[tuple[str, Any]]:
    """Layers PEFT's "all-linear" can target: torch Linear and transformers' Conv1D (GPT-2), by module name."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)]
