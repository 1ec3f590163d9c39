"""Fine-tuning methods: `full` trains every weight; adapter methods wrap the base with PEFT.

The method is applied in the init stage so that the initial adapter (seeded) is part of the versioned init output
and the train stage only loads and trains it.
"""

from __future__ import annotations

from ftcore.config import MethodConfig


def apply_method(model, cfg: MethodConfig):
    """Return the model to train: the model itself for `full`, a PeftModel for adapter methods."""
    if cfg.name == "full":
        return model
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)

    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha or 2 * cfg.r,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def parameter_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
