"""Sequence classification: a classification head on a pretrained encoder (or any base), trained with the loss the
balance stage chose (loss.json: class weights or focal loss), plain cross-entropy otherwise."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from transformers import Trainer

from ftcore.training.losses import LossFn, loss_from_spec


def class_names(train: pd.DataFrame) -> list[str]:
    """The classes in label-id order: sorted, so the same data gives the same ids everywhere."""
    return sorted(train["label"].astype(str).unique())


def encode(tokenizer, frame: pd.DataFrame, classes: list[str], max_length: int):
    """A tokenised datasets.Dataset with `labels` as class ids."""
    from datasets import Dataset

    ids = {name: i for i, name in enumerate(classes)}
    encoded = tokenizer(frame["text"].astype(str).tolist(), truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": [ids[str(label)] for label in frame["label"]]})


def loss_for(spec: dict | None, classes: list[str]) -> LossFn:
    return loss_from_spec(spec, classes) if spec else (lambda logits, labels: F.cross_entropy(logits, labels))


class ClassLossTrainer(Trainer):
    """A Trainer whose loss is `loss_fn(logits, labels)`: class weights and focal loss need the logits, which the
    model's built-in loss does not expose to them."""

    def __init__(self, *args, loss_fn: LossFn, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss_fn(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def predict(model, tokenizer, texts: Sequence[str], classes: list[str], max_length: int,
            batch_size: int = 64) -> list[str]:
    model.eval()
    predictions: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(model.device)
        predictions += [classes[i] for i in model(**batch).logits.argmax(-1).tolist()]
    return predictions
