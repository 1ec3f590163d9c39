"""Sequence classification: a head on a pretrained encoder (or any base) trained with the loss the balance stage
chose (loss.json: class weights or focal loss), plain cross-entropy otherwise."""

from __future__ import annotations

import torch.nn.functional as F
from transformers import Trainer

from ftcore.training.losses import LossFn, loss_from_spec


def loss_for(spec: dict | None, classes: list[str]) -> LossFn:
    return loss_from_spec(spec, classes) if spec else (lambda logits, labels: F.cross_entropy(logits, labels))


class ClassLossTrainer(Trainer):
    """A Trainer whose loss is `loss_fn(logits, labels)`: class weights and focal loss need the logits, and the
    model's built-in loss is plain cross-entropy."""

    def __init__(self, *args, loss_fn: LossFn, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss_fn(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss
