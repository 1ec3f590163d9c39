"""The model a recipe trains, as shapes and exact parameter counts.

The model is instantiated on PyTorch's `meta` device from its config: every parameter has a shape but no storage,
so a 7B model costs milliseconds and no memory, and nothing is downloaded or read but config.json. It is the model
the init stage builds: the causal LM, the vision-language model (vision tower, projector, language model) of a
recipe that sees images, or for an objective with a classifier's head the sequence classifier with one output per
class (`classes`). Fine-tuning methods are applied to that meta model by the pipeline's own `apply_method` (on a
vision-language model, to the parts train.vision trains; full fine-tuning freezes the others as the train stage
does), which gives the trainable count the init stage will see; the analytic formulas below are the fallback where a
method cannot be applied without real weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ftcore.errors import UserError, first_line
from ftcore.models.config import FullMethod, ModelConfig, ScratchModelConfig, VisionParts
from ftcore.models.meta import count_params, linear_layers, meta_model

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# Intermediate-sized tensors a vision tower's MLP keeps per patch for backward: its input and output of the
# activation, and for QuickGELU (CLIP's x * sigmoid(1.702 x)) the sigmoid too; counted with autograd's saved-tensor
# hooks on CLIP's and SigLIP's encoder layers (docs/planning.md).
TOWER_SAVED_INTERMEDIATE = {"quick_gelu": 3}
TOWER_SAVED_INTERMEDIATE_DEFAULT = 2


@dataclass(frozen=True)
class VisionShape:
    """The vision side of a vision-language model: what each part holds, and the vision tower's shape."""

    family: str  # the config's model_type: llava, idefics3, ...
    tower_params: int
    projector_params: int
    language_params: int  # the language model with its output head: every parameter of neither part
    hidden_size: int
    intermediate_size: int
    num_layers: int
    image_size: int  # pixels per side of what the tower sees (an image, or one tile)
    patch_size: int
    patches_per_tile: int  # the tower's positions per image or tile (CLIP's class token included)
    saved_intermediate: int  # intermediate-sized tensors a tower layer keeps per patch for backward
    projector_saved: int  # values the projector keeps per image token for backward: its layers' inputs


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    total_params: int
    embedding_params: int  # the input embedding table: a lookup, not a matmul, so FLOPs leave it out
    quantizable_params: int  # weights qlora stores in 4 bits: linear layers but the output head (and vision parts)
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
    num_labels: int | None = None  # a sequence classifier's outputs, one per class; None: a causal LM
    vision: VisionShape | None = None  # a vision-language model's vision side

    @property
    def bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def head_outputs(self) -> int:
        """The values the output head gives per token, which the loss works on: the vocabulary of a causal LM, the
        classes of a classifier."""
        return self.num_labels or self.vocab_size

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


def stand_in_tokenizer(cfg: ScratchModelConfig):
    """Stands in for the tokenizer init trains for a scratch vision-language model, whose processor needs a real
    one: the special and image tokens at the ids the trained one gives them, then fillers up to its size."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from ftcore.models.scratch import SPECIAL_TOKENS
    from ftcore.models.vision import IMAGE_TOKEN, TILE_TOKENS

    named = [*SPECIAL_TOKENS.values(), IMAGE_TOKEN, *TILE_TOKENS]
    tokens = named + [f"<filler {i}>" for i in range(len(named), cfg.vocab_size)]
    words = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)},
                                       unk_token=SPECIAL_TOKENS["unk_token"]))
    words.add_special_tokens(named)  # found in any text, as the processor finds its image tokens in a prompt
    return PreTrainedTokenizerFast(tokenizer_object=words, **SPECIAL_TOKENS)


def build_meta_model(cfg: ModelConfig, classes: list[str] | None = None):
    """The recipe's base model with shapes only (ftcore/models/meta.py): a causal LM, a vision-language model (as
    `load_model` loads a folder with a vision config), or with `classes` the sequence classifier
    `load_model(..., classes)` loads (one output per class). Scratch models go through the same builders as init."""
    if cfg.source != "scratch":
        from ftcore.models.load import sees_images

        config = pretrained_config(cfg)
        if classes is None:
            model_class = image_text_class(config) if sees_images(config.to_dict()) else None
            return meta_model(config, model_class, trust_remote_code=cfg.trust_remote_code)
        config.num_labels = len(classes)  # as load_model passes it to from_pretrained
        return meta_model(config, classifier_class(config))
    import torch

    from ftcore.models.scratch import build_model, build_vision_language

    with torch.device("meta"):
        if cfg.scratch.sees_images:
            return build_vision_language(cfg.scratch, stand_in_tokenizer(cfg.scratch))[0]
        return build_model(cfg.scratch, VocabOnly(cfg.scratch.vocab_size), classes)


def image_text_class(config):
    """The class AutoModelForImageTextToText builds for `config`, as load_model loads a vision-language folder."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(config.model_type)
    if name is None or not hasattr(transformers, name):
        raise UserError(f"model.name_or_path: transformers {transformers.__version__} has no image-text-to-text "
                        f"model for model_type {config.model_type!r}, which objective vision_language trains")
    return getattr(transformers, name)


def classifier_class(config):
    """The class AutoModelForSequenceClassification builds for `config`: an encoder or a decoder with a
    classification head (the score of its last token)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if name is None or not hasattr(transformers, name):
        raise UserError(f"model.name_or_path: transformers {transformers.__version__} has no sequence-classification "
                        f"model for model_type {config.model_type!r}, which a classifier's objective trains")
    return getattr(transformers, name)


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


def model_shape(cfg: ModelConfig, classes: list[str] | None = None) -> ModelShape:
    """The shape of the causal LM (or vision-language model), or with `classes` of the sequence classifier, that init
    builds from `cfg`."""
    model = build_meta_model(cfg, classes)
    text = model.config.get_text_config()
    hidden = text.hidden_size
    heads = text.num_attention_heads
    return ModelShape(
        architecture=type(model).__name__,
        total_params=count_params(model)[1],
        embedding_params=model.get_input_embeddings().weight.numel(),
        quantizable_params=sum(m.weight.numel() for _, m in quantized_linear_layers(model)),
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
        num_labels=len(classes) if classes is not None else None,
        vision=vision_shape(model),
    )


def vision_shape(model) -> VisionShape | None:
    """The parts of a vision-language model (ftcore/models/vision.py: `part_modules`) and its tower's shape; None
    for a model without a vision tower."""
    from ftcore.models.vision import part_modules

    parts = part_modules(model)
    if "vision_tower" not in parts or "projector" not in parts:
        return None
    tower, projector = (model.get_submodule(parts[part]) for part in ("vision_tower", "projector"))
    vision = model.config.vision_config
    positions = next((m.weight.shape[0] for name, m in tower.named_modules() if name.endswith("position_embedding")),
                     (vision.image_size // vision.patch_size) ** 2)
    layers = [m for _, m in linear_layers(projector)]
    # Each layer keeps its input for its weight's gradient; between two layers that is the activation's output,
    # and the activation keeps its input, the earlier layer's output.
    projector_saved = sum(m.in_features for m in layers) + sum(m.out_features for m in layers[:-1])
    tower_params, projector_params = count_params(tower)[1], count_params(projector)[1]
    return VisionShape(
        family=model.config.model_type, tower_params=tower_params, projector_params=projector_params,
        language_params=count_params(model)[1] - tower_params - projector_params,
        hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_layers=vision.num_hidden_layers, image_size=vision.image_size, patch_size=vision.patch_size,
        patches_per_tile=positions,
        saved_intermediate=TOWER_SAVED_INTERMEDIATE.get(vision.hidden_act, TOWER_SAVED_INTERMEDIATE_DEFAULT),
        projector_saved=projector_saved)


def output_head(model):
    """The module that gives the model's outputs: a causal LM's vocabulary projection, or a classifier's head, found
    by the names PEFT gives it (`score`, `classifier`), which PEFT trains whole and leaves out of all-linear."""
    from peft.utils.constants import SEQ_CLS_HEAD_NAMES

    output = model.get_output_embeddings()
    if output is not None:
        return output
    return next((getattr(model, name) for name in SEQ_CLS_HEAD_NAMES if getattr(model, name, None) is not None), None)


def body_linear_layers(model) -> list[tuple[str, Any]]:
    """The linear layers but the output head's: what bitsandbytes stores in 4 bits (it keeps the head in full
    precision) and what PEFT's all-linear adapts."""
    head = output_head(model)
    in_head = {id(m) for m in head.modules()} if head is not None else set()
    return [(name, m) for name, m in linear_layers(model) if id(m) not in in_head]


def quantized_linear_layers(model) -> list[tuple[str, Any]]:
    """What qlora stores in 4 bits: the body's linear layers, less a vision-language model's vision tower and
    projector, which stay in full precision (ftcore/models/peft_methods.py: `vision_parts_kept`)."""
    from ftcore.models.vision import part_modules

    kept = [f"{name}." for part, name in part_modules(model).items() if part != "language_model"]
    return [(name, m) for name, m in body_linear_layers(model) if not name.startswith(tuple(kept))]


def _checkpoint_dtype(config) -> str:
    dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    return dtype if dtype in DTYPE_BYTES else "float32"


# ---------------------------------------------------------------------------------------------------------------
# Trainable parameters of a method


def lora_trainable_analytic(model, r: int, target_modules: list[str] | str, per_layer_extra: bool = False) -> int:
    """r x (in + out) per targeted linear layer (A is r x in, B is out x r). DoRA adds a magnitude vector of
    `out` per layer (`per_layer_extra`). Targets match a module's name or its last dotted parts, as in PEFT;
    "all-linear" is every linear layer except the output head."""
    body = {name for name, _ in body_linear_layers(model)}
    total = 0
    for name, module in linear_layers(model):
        if target_modules == "all-linear":
            if name not in body:
                continue
        elif not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        # nn.Linear stores (out, in) and Conv1D (in, out): the sum is in + out either way
        total += r * sum(module.weight.shape) + (_out_features(module) if per_layer_extra else 0)
    return total


def _out_features(module) -> int:
    import torch

    return module.weight.shape[0] if isinstance(module, torch.nn.Linear) else module.weight.shape[1]


def method_trainable(cfg: ModelConfig, method, classes: list[str] | None = None,
                     vision: VisionParts | None = None) -> tuple[int, str]:
    """Trainable parameters of a method (a recipe's `method` section) on the causal LM or, with `classes`, the
    classifier, and how they were counted: the pipeline's `apply_method` on a meta model where it works there
    (for a classifier PEFT also trains the head, as in init), else an analytic formula. On a vision-language model
    `vision` (train.vision) says which parts train: an adapter goes on those init puts it on, and full fine-tuning
    freezes the others as the train stage does."""
    from ftcore.models.peft_methods import apply_method
    from ftcore.models.vision import freeze_parts

    try:
        model = apply_method(build_meta_model(cfg, classes), method, vision=vision)
        if vision is not None and isinstance(method, FullMethod):
            freeze_parts(model, vision)
        return count_params(model)[0], "exact (PEFT on a meta model)"
    except UserError:
        raise  # the method does not fit the model (targets no layer of it): the recipe's to fix
    except Exception as e:  # apply_method is written for real weights (QLoRA quantizes them): a failure on a meta
        # model means "count it another way", not "no plan"
        reason = f"analytic: apply_method needs real weights ({type(e).__name__})"
    return analytic_trainable(cfg, method, classes), reason


def analytic_trainable(cfg: ModelConfig, method, classes: list[str] | None = None) -> int:
    """The method's own parameters by formula, plus a classifier's head, which PEFT trains whole (SEQ_CLS)."""
    model = build_meta_model(cfg, classes)
    head = output_head(model) if classes is not None else None
    return _method_params_analytic(model, method) + (count_params(head)[1] if head is not None else 0)


def _method_params_analytic(model, method) -> int:
    name = method.name
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
