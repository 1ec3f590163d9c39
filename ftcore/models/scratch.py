"""The offline default base: a small Llama (or Mixtral-style mixture-of-experts, or vision-language) model built
from config, with a byte-level BPE tokenizer trained on the collected corpus. No download, deterministic for a
seed."""

from __future__ import annotations

from collections.abc import Iterable

from ftcore.models.config import ScratchModelConfig
from ftcore.models.load import MODEL_BUILD_LOCK
from ftcore.models.vision import IMAGE_TOKEN, TILE_TOKENS, build_vision_model

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int, cfg: ScratchModelConfig | None = None):
    """A byte-level BPE tokenizer of the texts; for a vision-language architecture with its image tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    extra = [IMAGE_TOKEN, *TILE_TOKENS] if cfg is not None and cfg.sees_images else []
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS.values(), *extra],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_model(cfg: ScratchModelConfig, tokenizer, classes: list[str] | None = None):
    """A causal LM, or with `classes` a sequence classifier (the same body with a head over the last token). A
    vision-language architecture: `build_vision_language`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, MixtralConfig

    architecture = {"llama": (LlamaConfig, {}),
                    "mixtral": (MixtralConfig, {
                        "num_local_experts": cfg.num_experts,
                        "num_experts_per_tok": cfg.experts_per_token,
                        "router_aux_loss_coef": cfg.router_aux_loss_coef,
                        # The model adds the load-balancing loss to its loss and returns it as `aux_loss`.
                        "output_router_logits": True,
                    })}
    config_class, extra = architecture[cfg.architecture]
    if classes is not None:
        extra |= {"num_labels": len(classes), "id2label": dict(enumerate(classes)),
                  "label2id": {name: i for i, name in enumerate(classes)}}
    config = config_class(**text_settings(cfg, tokenizer), **extra)
    auto = AutoModelForCausalLM if classes is None else AutoModelForSequenceClassification
    with MODEL_BUILD_LOCK:  # the seed too: another thread building meanwhile would draw from the same generator
        torch.manual_seed(cfg.seed)
        return auto.from_config(config)


def build_vision_language(cfg: ScratchModelConfig, tokenizer):
    """(model, processor) of a vision-language architecture, whose language model is the scratch Llama."""
    from transformers import LlamaConfig

    return build_vision_model(cfg, tokenizer, LlamaConfig(**text_settings(cfg, tokenizer)))


def text_settings(cfg: ScratchModelConfig, tokenizer) -> dict:
    """The language model's config settings."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=cfg.initializer_range,
    )
