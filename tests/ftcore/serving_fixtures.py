"""Model folders to serve in tests: the demo's tiny scratch causal LM, and a tiny classifier beside it."""

from __future__ import annotations

from pathlib import Path

from tests.ftcore.pipeline_fixtures import prepare


def causal_folder(root: Path) -> Path:
    return prepare(root).base.base_path


def classifier_folder(causal: Path, out: Path) -> Path:
    """A two-class sequence classifier with the causal model's tokenizer and shape, seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(causal)
    config.num_labels, config.id2label, config.label2id = 2, {0: "ham", 1: "spam"}, {"ham": 0, "spam": 1}
    tokenizer = AutoTokenizer.from_pretrained(causal)
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.architectures = ["LlamaForSequenceClassification"]
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
