"""Classification losses for imbalanced classes: weighted cross-entropy, focal loss, and the loss.json spec."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ftcore.data.balance import class_weights
from ftcore.errors import DataError
from ftcore.training.losses import focal_loss, loss_from_spec, weighted_cross_entropy


def _batch(seed: int = 0, n: int = 64, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)


def test_focal_with_gamma_zero_is_the_weighted_cross_entropy():
    logits, labels = _batch()
    weights = torch.tensor([0.5, 1.0, 4.0])
    torch.testing.assert_close(focal_loss(logits, labels, 0.0), F.cross_entropy(logits, labels))
    torch.testing.assert_close(focal_loss(logits, labels, 0.0, weights),
                               weighted_cross_entropy(logits, labels, weights))
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, weights),
                               F.cross_entropy(logits, labels, weight=weights))


def test_focal_down_weights_well_classified_examples():
    labels = torch.tensor([0])
    easy, hard = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.2, 0.0]])  # p(true) 0.98 and 0.55
    ratio_easy = focal_loss(easy, labels, 2.0) / weighted_cross_entropy(easy, labels, None)
    ratio_hard = focal_loss(hard, labels, 2.0) / weighted_cross_entropy(hard, labels, None)
    assert ratio_easy < 0.001 < 0.1 < ratio_hard < 1  # (1 - p)^2: 0.0003 vs 0.2
    assert ratio_easy == pytest.approx((1 - torch.softmax(easy, -1)[0, 0]) ** 2)


def _imbalanced(seed: int, n_major: int = 950, n_minor: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping Gaussian blobs, 95% class 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n_major, 2, generator=g), torch.randn(n_minor, 2, generator=g) + 1.5])
    return x, torch.cat([torch.zeros(n_major, dtype=torch.long), torch.ones(n_minor, dtype=torch.long)])


def _minority_recall(loss_fn, steps: int = 150) -> float:
    """Full-batch logistic regression trained with `loss_fn`, scored on fresh data from the same blobs."""
    torch.manual_seed(0)
    x, y = _imbalanced(0)
    model = torch.nn.Linear(2, 2)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimiser.zero_grad()
        loss_fn(model(x), y).backward()
        optimiser.step()
    x_test, y_test = _imbalanced(1)
    predicted = model(x_test).argmax(dim=1)
    return ((predicted == 1) & (y_test == 1)).sum().item() / (y_test == 1).sum().item()


def test_class_weighted_and_focal_losses_recall_more_of_the_minority_than_plain_cross_entropy():
    _, y = _imbalanced(0)
    weights = class_weights(pd.Series(["common", "rare"])[y.numpy()].reset_index(drop=True))
    classes = ["common", "rare"]
    plain = _minority_recall(lambda logits, labels: weighted_cross_entropy(logits, labels, None))
    weighted = _minority_recall(loss_from_spec({"type": "weighted_cross_entropy", "class_weights": weights}, classes))
    focal = _minority_recall(loss_from_spec({"type": "focal", "gamma": 2.0, "class_weights": weights}, classes))
    assert plain < 0.5  # measured 0.34: the decision boundary sits deep in the minority blob
    assert weighted > plain + 0.4 and focal > plain + 0.4  # measured 0.88 both


def test_loss_spec_weights_follow_the_models_class_order():
    logits, labels = _batch(k=2)
    spec = {"type": "weighted_cross_entropy", "class_weights": {"spam": 3.0, "ham": 0.5}}
    torch.testing.assert_close(loss_from_spec(spec, ["ham", "spam"])(logits, labels),
                               F.cross_entropy(logits, labels, weight=torch.tensor([0.5, 3.0])))
    with pytest.raises(DataError, match=r"class weights for \['ham', 'spam'\], but the model's classes are "
                                        r"\['ham', 'other'\]"):
        loss_from_spec(spec, ["ham", "other"])
    with pytest.raises(DataError, match="unknown loss type 'hinge'"):
        loss_from_spec({**spec, "type": "hinge"}, ["ham", "spam"])
