"""The model a recipe trains, as shapes and exact parameter counts.

The model is instantiated on PyTorch's `meta` device from its config: every parameter has a shape but no storage,
so a 7B model costs milliseconds and no memory, and nothing is downloaded or read but config.json. Fine-tuning
methods are applied to that meta model with PEFT, which gives the trainable count the init stage will see; the
analytic formulas below are the fallback where a method cannot be applied without real weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ftcore.errors import UserError, first_line
from ftcore.models.config import ModelConfig
from ftcore.models.meta import count_params, linear_layers, meta_model

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    total_params: int
    embedding_params: int  # the input embedding table: a lookup, not a matmul, so FLOPs leave it out
    quantizable_params: int  # weights of the linear layers bitsandbytes stores in 4 bits (all but the output head)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_positions: int
    num_experts: int  # a mixture of experts' experts per layer; 1 for a dense model
    experts_per_token: int
    expert_params: int
    dtype: str  # what from_pretrained loads ("auto": the checkpoint's dtype), hence what training runs in

    @property
    def bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VocabOnly:
    """Stands in for the scratch tokenizer, which init trains on the data: `build_model` reads only its size and
    special token ids (ids 0-2, the order of scratch.SPECIAL_TOKENS)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def build_meta_model(cfg: ModelConfig):
    """The recipe's base model with shapes only (ftcore/models/meta.py). Scratch models go through the same
    `build_model` as init."""
    if cfg.source != "scratch":
        return meta_model(pretrained_config(cfg), trust_remote_code=cfg.trust_remote_code)
    import torch

    from ftcore.models.scratch import build_model

    with torch.device("meta"):
        return build_model(cfg.scratch, VocabOnly(cfg.scratch.vocab_size))


def pretrained_config(cfg: ModelConfig):
    """The config of the recipe's pretrained base (a GGUF file's from its metadata), after the checks of its folder
    (ftcore/models/folders.py)."""
    from transformers import AutoConfig

    from ftcore.models.folders import pretrained_source

    source = pretrained_source(cfg, files=False)  # config.json is all planning reads
    gguf = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=cfg.trust_remote_code, **gguf)
    except (OSError, ValueError) as e:
        raise UserError(f"model.name_or_path: cannot read the model config from {cfg.name_or_path!r} "
                        f"({first_line(e)}); give a local folder with config.json, or a hub id where a hub is "
                        f"reachable") from None


def model_shape(cfg: ModelConfig) -> ModelShape:
    model = build_meta_model(cfg)
    text = model.config.get_text_config()
    hidden = text.hidden_size
    heads = text.num_attention_heads
    output = model.get_output_embeddings()
    return ModelShape(
        architecture=type(model).__name__,
        total_params=count_params(model)[1],
        embedding_params=model.get_input_embeddings().weight.numel(),
        quantizable_params=sum(m.weight.numel() for _, m in linear_layers(model) if m is not output),
        hidden_size=hidden,
        # GPT-2 style configs call it n_inner, and leave it unset for the usual 4 x hidden
        intermediate_size=getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden,
        num_layers=text.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        vocab_size=text.vocab_size,
        max_positions=getattr(text, "max_position_embeddings", None) or 2048,
        num_experts=getattr(text, "num_local_experts", None) or 1,
        experts_per_token=getattr(text, "num_experts_per_tok", None) or 1,
        expert_params=sum(p.numel() for name, p in model.named_parameters() if ".experts." in name),
        dtype="float32" if cfg.source == "scratch" else _checkpoint_dtype(model.config),
    )


def _checkpoint_dtype(config) -> str:
    dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    return dtype if dtype in DTYPE_BYTES else "float32"


# ---------------------------------------------------------------------------------------------------------------
# Trainable parameters of a method


def peft_trainable(cfg: ModelConfig, peft_config) -> int:
    """Trainable parameters once `peft_config` wraps the meta model: exactly what get_peft_model gives in init."""
    from peft import get_peft_model

    return count_params(get_peft_model(build_meta_model(cfg), peft_config))[0]


def lora_config(r: int, target_modules: list[str] | str):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules, task_type="CAUSAL_LM")


def prompt_tuning_config(num_virtual_tokens: int):
    from peft import PromptTuningConfig

    return PromptTuningConfig(num_virtual_tokens=num_virtual_tokens, task_type="CAUSAL_LM")


def lora_trainable_analytic(model, r: int, target_modules: list[str] | str, per_layer_extra: bool = False) -> int:
    """r x (in + out) per targeted linear layer (A is r x in, B is out x r). DoRA adds a magnitude vector of
    `out` per layer (`per_layer_extra`). Targets match a module's name or its last dotted parts, as in PEFT;
    "all-linear" is every linear layer except the output head."""
    output = model.get_output_embeddings()
    total = 0
    for name, module in linear_layers(model):
        if target_modules == "all-linear":
            if module is output:
                continue
        elif not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        # nn.Linear stores (out, in) and Conv1D (in, out): the sum is in + out either way
        total += r * sum(module.weight.shape) + (_out_features(module) if per_layer_extra else 0)
    return total


def _out_features(module) -> int:
    import torch

    return module.weight.shape[0] if isinstance(module, torch.nn.Linear) else module.weight.shape[1]


def method_trainable(cfg: ModelConfig, method) -> tuple[int, str]:
    """Trainable parameters of the recipe's own method, and how they were counted: the pipeline's `apply_method`
    on a meta model where it works there, else an analytic formula."""
    from ftcore.models.peft_methods import apply_method

    try:
        return count_params(apply_method(build_meta_model(cfg), method))[0], "exact (PEFT on a meta model)"
    except UserError:
        raise  # the method does not fit the model (targets no layer of it): the recipe's to fix
    except Exception as e:  # apply_method is written for real weights (QLoRA quantizes them): a failure on a meta
        # model means "count it another way", not "no plan"
        reason = f"analytic: apply_method needs real weights ({type(e).__name__})"
    return analytic_trainable(cfg, method), reason


def analytic_trainable(cfg: ModelConfig, method) -> int:
    name, model = method.name, build_meta_model(cfg)
    if name in ("lora", "qlora", "dora", "loha"):
        r, targets = getattr(method, "r", 8), getattr(method, "target_modules", "all-linear")
        lora = lora_trainable_analytic(model, r, targets, per_layer_extra=name == "dora")
        return 2 * lora if name == "loha" else lora  # LoHa: two low-rank pairs per layer
    text = model.config.get_text_config()
    tokens = getattr(method, "num_virtual_tokens", 20)
    if name == "prompt":
        return tokens * text.hidden_size
    if name == "prefix":  # a key and a value vector per virtual token in every layer
        return tokens * 2 * text.num_hidden_layers * text.hidden_size
    raise UserError(f"method.name: no parameter count for {name!r} (PEFT could not apply it to a meta model and "
                    f"it has no analytic formula); the other methods are estimated with `ftflow plan --set "
                    f"method.name=lora`")
