"""The recipe's `model` section (the base model: built from config, a local folder, or a registered champion) and
its `method` section: one pydantic model per `method.name`, so each method accepts exactly its own options
(docs/methods.md)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from ftcore.schema import Fraction, Seed, Strict, did_you_mean


def bitsandbytes_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("bitsandbytes") is not None


class FullMethod(Strict):
    """Every weight trains; no adapter."""

    name: Literal["full"] = "full"


class PeftMethod(Strict):
    """A method that wraps the base with a PEFT adapter."""

    seed: Seed = Field(0, description="seed of the adapter's initial weights")


class LoraMethod(PeftMethod):
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; defaults to 2*r")
    dropout: Fraction = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    target_parameters: list[str] = Field(
        default_factory=list, description="weights that are parameters rather than linear layers, e.g. the fused "
                                          "experts of a mixture of experts (mlp.experts.gate_up_proj, "
                                          "mlp.experts.down_proj); LoRA is added to them too")


class DoraMethod(LoraMethod):
    """LoRA with weight decomposition: the update's direction and magnitude train separately."""

    name: Literal["dora"] = "dora"

    @field_validator("target_parameters")
    @classmethod
    def _no_parameters(cls, names: list[str]) -> list[str]:
        if names:
            raise ValueError("dora decomposes linear layers only (PEFT has no DoRA for parameters); use lora")
        return names


class QLoraMethod(LoraMethod):
    """LoRA on a base quantised to 4 bits by bitsandbytes."""

    name: Literal["qlora"] = "qlora"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantise the quantisation constants too (~0.4 bit per weight)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the 4-bit weights are dequantised to for each matmul; float32 on CPU")

    @field_validator("name")
    @classmethod
    def _bitsandbytes_installed(cls, name: str) -> str:
        if not bitsandbytes_installed():
            raise ValueError("qlora needs the bitsandbytes package: pip install 'bitsandbytes>=0.50,<0.51'")
        return name


class Ia3Method(PeftMethod):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(
        None, description="layers whose activations are rescaled; default: PEFT's choice for the architecture "
                          "(Llama: k_proj, v_proj, down_proj)")
    feedforward_modules: list[str] | None = Field(
        None, description="those of target_modules rescaled on their input (feed-forward layers) rather than their "
                          "output; default: PEFT's choice for the architecture (Llama: down_proj)")

    @model_validator(mode="after")
    def _feedforward_is_a_subset(self) -> Ia3Method:
        if self.feedforward_modules is not None:
            if self.target_modules is None:
                raise ValueError("feedforward_modules needs target_modules (it must be a subset of them)")
            if extra := sorted(set(self.feedforward_modules) - set(self.target_modules)):
                raise ValueError(f"feedforward_modules {extra} are not in target_modules")
        return self


class LycorisMethod(PeftMethod):
    """LoHa and LoKr: low-rank Hadamard / Kronecker products instead of LoRA's B @ A."""

    r: int = Field(8, ge=1)
    alpha: int | None = Field(None, ge=1, description="scaling numerator (scale = alpha / r); defaults to r")
    rank_dropout: Fraction = 0.0
    module_dropout: Fraction = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class LohaMethod(LycorisMethod):
    name: Literal["loha"] = "loha"


class LokrMethod(LycorisMethod):
    name: Literal["lokr"] = "lokr"


class PromptLearningMethod(PeftMethod):
    num_virtual_tokens: int = Field(20, ge=1, description="trained virtual tokens put before every input")


class PrefixMethod(PromptLearningMethod):
    """Prefix tuning: trained keys and values at every layer (deep prompts, as in P-tuning v2)."""

    name: Literal["prefix"] = "prefix"
    prefix_projection: bool = Field(False, description="produce the prefixes through a trained MLP")
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="prefix_projection: hidden width of the MLP; defaults to the model's hidden size")

    @model_validator(mode="after")
    def _width_needs_the_projection(self) -> PrefixMethod:
        if self.encoder_hidden_size is not None and not self.prefix_projection:
            raise ValueError("encoder_hidden_size applies only with prefix_projection: true")
        return self


class PromptMethod(PromptLearningMethod):
    """Prompt tuning: trained embeddings before the input, at the first layer only."""

    name: Literal["prompt"] = "prompt"
    init: Literal["random", "text"] = "random"
    init_text: str | None = Field(None, min_length=1, description="init: text, the text whose embeddings start "
                                                                  "the virtual tokens (repeated or cut to fit)")

    @model_validator(mode="after")
    def _text_with_text_init(self) -> PromptMethod:
        if self.init == "text" and self.init_text is None:
            raise ValueError("init: text needs init_text")
        if self.init == "random" and self.init_text is not None:
            raise ValueError("init_text applies only with init: text")
        return self


class PTuningMethod(PromptLearningMethod):
    """P-tuning: virtual token embeddings produced by a trained encoder (MLP or LSTM), at the first layer."""

    name: Literal["p_tuning"] = "p_tuning"
    encoder_hidden_size: int = Field(128, ge=1, description="hidden width of the prompt encoder")
    encoder_reparameterization_type: Literal["mlp", "lstm"] = "mlp"


class BottleneckAdapterMethod(PeftMethod):
    """Houlsby-style bottleneck adapters (down-projection, non-linearity, up-projection, residual)."""

    name: Literal["adapter"] = "adapter"
    bottleneck_size: int = Field(16, ge=1, description="width of the bottleneck")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: Fraction = 0.0
    target_modules: list[str] | None = Field(
        None, description="sub-blocks followed by an adapter; default: the attention output and MLP output of each "
                          "block, found in the model's modules (Llama: o_proj, down_proj; GPT-2: c_proj; BERT: "
                          "attention.output.dense, output.dense; a mixture of experts: the whole MoE block)")


def _one_method(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate `method` against the model its `name` picks (lora when absent), and phrase the errors for the
    user: `method.FIELD: unknown field for method NAME` rather than pydantic's tagged locations."""
    if isinstance(value, dict) and "name" not in value:
        value = {**value, "name": "lora"}
    try:
        return handler(value)
    except ValidationError as e:
        raise ValidationError.from_exception_data(e.title, [_method_error(err) for err in e.errors()]) from None


def _method_error(err: ErrorDetails) -> dict[str, Any]:
    if err["type"] == "union_tag_invalid":
        message = f"must be one of {', '.join(METHOD_NAMES)}, got {err['ctx']['tag']!r}"
        return {"type": PydanticCustomError("method_name", message), "loc": ("name",), "input": err["input"]}
    loc = err["loc"]
    if loc and loc[0] in METHOD_NAMES:  # pydantic puts the tag (the method's name) first: drop it
        method, loc = loc[0], loc[1:]
        if err["type"] == "extra_forbidden":
            model = next(m for m in METHODS if m.model_fields["name"].default == method)
            message = f"unknown field for method {method}{did_you_mean(str(loc[-1]), sorted(model.model_fields))}"
            return {"type": PydanticCustomError("method_field", message), "loc": loc, "input": err["input"]}
    return {"type": err["type"], "loc": loc, "input": err["input"], **({"ctx": err["ctx"]} if "ctx" in err else {})}


METHODS = (FullMethod, LoraMethod, QLoraMethod, DoraMethod, Ia3Method, PrefixMethod, PromptMethod, PTuningMethod,
           BottleneckAdapterMethod, LohaMethod, LokrMethod)
METHOD_NAMES = [method.model_fields["name"].default for method in METHODS]
# The recipe's `method` section: the model its `name` picks.
MethodConfig = Annotated[Union[METHODS], Field(discriminator="name"), WrapValidator(_one_method)]  # noqa: UP007


class ScratchVisionConfig(Strict):
    """The vision side of a scratch vision-language model: a small ViT (CLIP's for llava, SigLIP's for idefics3)
    whose patch features a projector maps into the language model's embeddings."""

    image_size: int = Field(64, ge=16, description="pixels per side of the encoder's input (llava: the whole "
                                                   "image, resized; idefics3: one tile)")
    patch_size: int = Field(8, ge=2, description="pixels per side of a patch: (image_size/patch_size)^2 patches")
    hidden_size: int = Field(64, ge=16)
    intermediate_size: int = Field(128, ge=16)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    max_tiles: int = Field(4, ge=1, le=6, description="idefics3: an image is resized so that its longest side is at "
                                                      "most max_tiles tiles, and cut into tiles plus a global view "
                                                      "(wide text lines stay readable)")

    @model_validator(mode="after")
    def _patches_fit(self) -> ScratchVisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("vision hidden_size must be divisible by num_attention_heads")
        return self


VISION_ARCHITECTURES = ("llava", "idefics3")


class VisionParts(Strict):
    """`train.vision`: which parts of a vision-language model train, as peers offer it (LLaMA-Factory's
    freeze_vision_tower / freeze_multi_modal_projector / freeze_language_model, ms-swift's freeze_vit / freeze_aligner /
    freeze_llm). With full fine-tuning a frozen part keeps its weights; with an adapter method the adapter goes on the
    language model's linear layers (and the vision tower's with vision_tower: true) and a trained projector is trained
    whole beside it."""

    vision_tower: bool = Field(False, description="train the image encoder (pretrained encoders are usually kept)")
    projector: bool = Field(True, description="train the layers that map image features into the text embeddings")
    language_model: bool = Field(True, description="train the language model")
    vision_tower_lr: float | None = Field(None, gt=0, description="the vision tower's learning rate; default: "
                                                                  "train.learning_rate")
    projector_lr: float | None = Field(None, gt=0, description="the projector's learning rate; default: "
                                                               "train.learning_rate")

    @model_validator(mode="after")
    def _something_trains(self) -> VisionParts:
        if not (self.vision_tower or self.projector or self.language_model):
            raise ValueError("every part is frozen: train at least one of vision_tower, projector, language_model")
        for part in ("vision_tower", "projector"):
            if getattr(self, f"{part}_lr") is not None and not getattr(self, part):
                raise ValueError(f"{part}_lr: the {part} is frozen ({part}: false)")
        return self

    def trained(self) -> list[str]:
        return [part for part in ("vision_tower", "projector", "language_model") if getattr(self, part)]


class ScratchModelConfig(Strict):
    """A small model built from config, with a BPE tokenizer trained on the corpus: a Llama, a Mixtral-style
    mixture of experts (every MLP is `num_experts` experts of which a router picks `experts_per_token`), or a
    vision-language model whose language model is that Llama (llava: one resized image; idefics3: tiles)."""

    architecture: Literal["llama", "mixtral", "llava", "idefics3"] = "llama"
    vision: ScratchVisionConfig = ScratchVisionConfig()
    num_experts: int = Field(4, ge=2, description="mixtral: experts per MoE layer")
    experts_per_token: int = Field(2, ge=1, description="mixtral: experts the router picks for each token")
    router_aux_loss_coef: float = Field(0.02, ge=0, description="mixtral: weight of the load-balancing loss")
    vocab_size: int = Field(512, ge=64)
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(256, ge=16)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(256, ge=32)
    # Wider than the usual 0.02: a frozen random base then gives adapters logits large enough to steer, so LoRA on
    # a scratch model learns in a few epochs instead of plateauing (measured on the demo, 8 epochs: test
    # perplexity 1.9 vs 102.9, exact match 0.63 vs 0.27).
    initializer_range: float = Field(0.1, gt=0, description="std of the random initial weights")
    seed: Seed = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ScratchModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        return self

    @model_validator(mode="after")
    def _experts_fit(self) -> ScratchModelConfig:
        moe_fields = {"num_experts", "experts_per_token", "router_aux_loss_coef"} & self.model_fields_set
        if self.architecture != "mixtral" and moe_fields:
            raise ValueError(f"{', '.join(sorted(moe_fields))}: only for architecture: mixtral")
        if "vision" in self.model_fields_set and not self.sees_images:
            raise ValueError(f"vision: only for architecture {' or '.join(VISION_ARCHITECTURES)}")
        if self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token must be at most num_experts")
        return self

    @property
    def sees_images(self) -> bool:
        return self.architecture in VISION_ARCHITECTURES


class ModelConfig(Strict):
    source: Literal["scratch", "pretrained", "champion"] = Field(
        "scratch", description="champion: continue from a registered model's champion (or `version`)")
    name_or_path: str | None = Field(
        None, description="source pretrained: a local model folder (the one holding config.json; sharded "
                          "checkpoints too), a .gguf file, or a hub id where a hub is reachable")
    trust_remote_code: bool = Field(
        False, description="source pretrained: run the Python code a model folder ships (config.json's auto_map) "
                           "where transformers has no class of its own for the model; off, such a folder is "
                           "refused. Only for code you have read and trust")
    allow_pickle: bool = Field(
        False, description="source pretrained: load weights that exist only as a pickle (pytorch_model.bin), read "
                           "with torch.load(weights_only=True) and saved as safetensors by the init stage; off, "
                           "such a folder is refused (a pickle can run code when loaded): convert it to safetensors")
    gguf_file: str | None = Field(
        None, description="source pretrained: the .gguf file inside name_or_path (a folder or a hub repo) to load, "
                          "weights dequantised and tokenizer read from the file; the init stage saves it as a "
                          "safetensors base. A local .gguf file can also be given as name_or_path itself")
    scratch: ScratchModelConfig = ScratchModelConfig()
    registered_model: str | None = Field(None, description="source champion: the registered model to start from; "
                                                           "default: this recipe's own (continual retraining)")
    version: int | None = Field(None, ge=1, description="source champion: this version instead of the champion (a "
                                                         "chain pins the one it produced)")
    start: Literal["merged", "adapter"] = Field(
        "merged", description="source champion: merged: its weights, merged with its adapter, are the new base and "
                              "the method starts afresh on them; adapter: keep training its own adapter on its base")
    @model_validator(mode="after")
    def _source_has_what_it_needs(self) -> ModelConfig:
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError("source: pretrained needs name_or_path (a local folder or a hub id)")
        champion_only = {"registered_model", "version", "start"} & self.model_fields_set
        if self.source != "champion" and champion_only:
            raise ValueError(f"{', '.join(sorted(champion_only))}: only for source: champion")
        pretrained_only = [name for name, on in (("allow_pickle", self.allow_pickle),
                                                 ("gguf_file", self.gguf_file is not None)) if on]
        if self.source != "pretrained" and pretrained_only:
            raise ValueError(f"{', '.join(pretrained_only)}: only for source: pretrained")
        return self

    @field_validator("gguf_file")
    @classmethod
    def _a_gguf_file_name(cls, name: str | None) -> str | None:
        if name is None:
            return name
        if not name.lower().endswith(".gguf"):
            raise ValueError(f"{name!r} is not a .gguf file name")
        if name.startswith(("/", "~")) or "\\" in name or ".." in name.split("/"):
            raise ValueError(f"{name!r}: give the file's name inside name_or_path (or the whole path of the file as "
                             "name_or_path, without gguf_file)")
        return name

    @model_validator(mode="after")
    def _one_gguf_file(self) -> ModelConfig:
        if self.gguf_file is not None and (self.name_or_path or "").lower().endswith(".gguf"):
            raise ValueError("name_or_path is a .gguf file already; give the file either as name_or_path or as "
                             "gguf_file (a file inside the folder name_or_path names), not both")
        return self


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")
