"""Classification losses for imbalanced classes, built from the spec the clean/balance stage writes as loss.json
(balance.strategy class_weights or focal_loss; see docs/balancing.md).

Both losses average with the class weights as torch's weighted cross-entropy does, sum(w_y * loss) / sum(w_y), so
focal loss with gamma 0 is exactly the weighted cross-entropy and the loss scale does not depend on the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ftcore.errors import DataError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with each example weighted by its class's weight (None: plain cross-entropy)."""
    return F.cross_entropy(logits, labels, weight=None if class_weights is None else class_weights.to(logits))


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float,
               alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, so examples the model already
    gets right count less; `alpha` weights the classes like class_weights."""
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
    per_example = -((1 - log_p.exp()) ** gamma) * log_p
    weights = torch.ones_like(per_example) if alpha is None else alpha.to(logits)[labels]
    return (weights * per_example).sum() / weights.sum()


def loss_from_spec(spec: dict, classes: list[str]) -> LossFn:
    """`fn(logits, labels)` for a loss.json spec; `classes` are the model's class names in label-id order."""
    weights = _ordered_weights(spec, classes)
    if spec["type"] == "weighted_cross_entropy":
        return lambda logits, labels: weighted_cross_entropy(logits, labels, weights)
    if spec["type"] == "focal":
        gamma = float(spec["gamma"])
        return lambda logits, labels: focal_loss(logits, labels, gamma, weights)
    raise DataError(f"loss.json: unknown loss type {spec['type']!r}; expected weighted_cross_entropy or focal")


def _ordered_weights(spec: dict, classes: list[str]) -> torch.Tensor:
    """The spec's per-class weights as a tensor indexed by label id."""
    given = spec["class_weights"]
    if set(given) != set(classes):
        raise DataError(f"loss.json has class weights for {sorted(given)}, but the model's classes are "
                        f"{sorted(classes)}; they must be the same classes")
    return torch.tensor([given[c] for c in classes], dtype=torch.float32)
