"""Which fine-tuning methods and objectives fit a model, decided from its config.json alone (no weights loaded).

`refusal` is the one place that knows what a family's architecture does not allow; `ftflow validate`, the init stage
and `ftflow inspect` all ask it. Every rule here is proved by the support matrix (`make compat`, which writes
docs/models.md): a refused cell must be refused in one line, and every other cell must train, export, reload and
answer.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ftcore.errors import UserError
from ftcore.models.config import METHOD_NAMES

if TYPE_CHECKING:
    from ftcore.models.config import MethodConfig, ModelConfig
    from ftcore.objectives import Objective

# The methods that feed the model embeddings instead of token ids.
EMBEDDING_INPUT_METHODS = ("prompt", "p_tuning")


# Methods that do not fit a vision-language model, with the reason.
VISION_REFUSED = {
    "prefix": ("PEFT's prefix tuning sizes its prefixes from the top-level config's hidden size, which a "
               "vision-language model's config nests in its text config; use prompt, p_tuning, lora or another "
               "adapter method"),
}

# LyCORIS methods in PEFT adapt nn.Linear and convolutions only.
LYCORIS_METHODS = ("loha", "lokr")


@dataclass(frozen=True)
class ModelKind:
    """What the rules need to know of a model: its config's model_type, whether it is a decoder (causal LM), whether
    its projections are transformers' Conv1D (GPT-2's layout: a Linear with its weight transposed), and whether it
    is a mixture of experts trained with a router load-balancing loss, and whether its forward takes past keys and
    values (which prefix tuning passes its prefixes as)."""

    model_type: str
    decoder: bool
    conv1d: bool = False
    router_loss: bool = False
    takes_cache: bool = True
    parameter_targets: bool = False  # PEFT's all-linear adapts some weights as parameters (Mixtral's router)
    sees_images: bool = False  # a vision-language model

    @classmethod
    def of(cls, config, trust_remote_code: bool = False) -> ModelKind:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        from ftcore.models.load import sees_images

        conv1d, experts, takes_cache, parameter_targets = _layer_kinds(config, trust_remote_code)
        router_loss = experts and bool(getattr(config.get_text_config(), "router_aux_loss_coef", 0))
        return cls(config.model_type, config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES, conv1d, router_loss,
                   takes_cache, parameter_targets, sees_images(config.to_dict()))


def _layer_kinds(config, trust_remote_code: bool) -> tuple[bool, bool, bool, bool]:
    """(Conv1D layers, experts, a forward taking past_key_values, weights PEFT's all-linear adapts as parameters) of
    the model built from `config` on PyTorch's meta device (shapes, no memory, nothing read but the config), so the
    answer comes from the architecture's own code and PEFT's, not a list of families. Experts are fused 3-D
    parameters, or a list of expert blocks. A remote-code model whose code offers no base model class counts as
    having none of them, with a cache."""
    import inspect

    import peft
    import torch
    from transformers import AutoModel

    from ftcore.models.load import MODEL_BUILD_LOCK

    try:
        with MODEL_BUILD_LOCK, torch.device("meta"):
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError:
        return False, False, True, False
    conv1d = any(type(module).__name__ == "Conv1D" for module in model.modules())
    experts = any(p.dim() == 3 for p in model.parameters()) or any(
        name.endswith(".experts") for name, _ in model.named_modules())
    takes_cache = "past_key_values" in inspect.signature(model.forward).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about the meta device; nothing is trained here
        adapted = peft.get_peft_model(model, peft.LoraConfig(target_modules="all-linear"))
    parameter_targets = any(type(module).__name__ == "ParamWrapper" for module in adapted.modules())
    return conv1d, experts, takes_cache, parameter_targets


def refusal(kind: ModelKind, method: str, objective: Objective, all_linear: bool = True) -> str | None:
    """Why `method` cannot train `objective` on this kind of model, or None when it can; `all_linear`: the method
    targets PEFT's all-linear (its default) rather than modules the recipe names."""
    if objective.sees_images and not kind.sees_images:
        return (f"objective {objective.name} trains on images, and {kind.model_type} reads only text; use a "
                "vision-language model (a local folder of one, or scratch architecture llava or idefics3)")
    if kind.sees_images and not objective.sees_images:
        return (f"{kind.model_type} is a vision-language model, and objective {objective.name} trains on text only; "
                "use objective vision_language (data.format image_text), or a text model")
    if kind.sees_images and method in VISION_REFUSED:
        return VISION_REFUSED[method]
    if objective.head == "language_model" and not kind.decoder:
        return (f"objective {objective.name} generates text, and {kind.model_type} is an encoder without a "
                "language-model head; use objective classification, or a decoder model")
    if method in LYCORIS_METHODS and kind.conv1d:
        return (f"PEFT's {method} adapts nn.Linear and convolution layers, and {kind.model_type}'s projections are "
                "transformers' Conv1D; use lora, dora, ia3 or adapter")
    if method == "dora" and all_linear and kind.parameter_targets:
        return (f"PEFT's all-linear adapts some of {kind.model_type}'s weights as parameters (its router), and PEFT "
                "has no DoRA for parameters; use lora, or name method.target_modules")
    if method == "prefix" and not kind.takes_cache:
        return (f"prefix tuning passes its prefixes as past keys and values, which {kind.model_type}'s forward does "
                "not take; use prompt, p_tuning, lora or another adapter method")
    if method == "prefix" and kind.router_loss:
        return (f"prefix tuning lengthens the attention mask by its virtual tokens, and {kind.model_type}'s router "
                "load-balancing loss pairs that mask with the router logits of the real tokens only; use lora, ia3 or "
                "another adapter method (or a config with router_aux_loss_coef: 0)")
    if objective.classifies and kind.decoder and method in EMBEDDING_INPUT_METHODS:
        return (f"{method} passes embeddings to the model, from which a classifier on a decoder ({kind.model_type}) "
                "cannot find each text's last token in a padded batch; use prefix, lora or another adapter method")
    return None


def check_fits(config, method: MethodConfig, objective: Objective) -> None:
    """Refuse, in one line, a method the loaded model's architecture cannot train for `objective`."""
    if reason := refusal(ModelKind.of(config), method.name, objective, _all_linear(method)):
        raise UserError(f"method.name: {method.name} does not fit this model: {reason}")


def _all_linear(method: MethodConfig) -> bool:
    return getattr(method, "target_modules", "all-linear") == "all-linear"


def supported_methods(kind: ModelKind, objective: Objective) -> dict[str, str | None]:
    """Every method with why it is refused for `objective` (None: supported)."""
    return {method: refusal(kind, method, objective) for method in METHOD_NAMES}


def local_config(name_or_path: str | Path, trust_remote_code: bool = False):
    """The config of a local model folder, or None when `name_or_path` is not a local folder (a hub id)."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        return None
    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def check_recipe_model(cfg: ModelConfig, method: MethodConfig, objective: Objective,
                       exports: Sequence[str] = ()) -> None:
    """Refuse, in one line, a recipe whose method or objective its base model (the `model` section) cannot train,
    or whose `deploy.exports` it cannot give (a GGUF file of a family llama.cpp's layout is not written for): a
    scratch model is the decoder ftflow builds; a pretrained folder's kind is read from its config.json. A hub id or
    a registered champion is checked once it loads (init stage) and when its exports are made (deploy stage)."""
    if cfg.source == "scratch":
        scratch = cfg.scratch
        moe = scratch.architecture == "mixtral"
        kind = ModelKind(scratch.architecture, decoder=True, router_loss=moe and scratch.router_aux_loss_coef > 0,
                         parameter_targets=moe, sees_images=scratch.sees_images)
        model = f"the scratch {scratch.architecture}"
    elif cfg.source == "pretrained" and cfg.name_or_path is not None:
        from ftcore.models.load import resolve_pretrained

        config = local_config(resolve_pretrained(cfg.name_or_path), cfg.trust_remote_code)
        if config is None:
            return
        kind, model = ModelKind.of(config, cfg.trust_remote_code), cfg.name_or_path
    else:
        return
    if reason := refusal(kind, method.name, objective, _all_linear(method)):
        raise UserError(f"method.name: {method.name} does not fit {model}: {reason}")
    from ftcore.models.gguf_families import family_refusal

    generates = objective.head == "language_model"
    for export in exports:
        if export.startswith("gguf_") and (reason := family_refusal(kind.model_type, generates)):
            raise UserError(f"deploy.exports: {export} does not fit {model}: {reason}")
