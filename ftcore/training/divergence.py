"""A run whose loss or weights stop being finite is stopped at the step it is found, never saved or registered.

A NaN or an infinity never goes away again: every later step, checkpoint and the registered model would carry it.
The checks raise `NonFinite` where they find one (the loss callback, the checkpoint commit, the trained model), and
`refuse_divergence` turns it into a one-line user error that names the step and what to change. It is a user error,
not a fault to retry: with the seed fixed, the same recipe diverges at the same step every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ftcore.errors import UserError
from ftcore.training.config import TrainConfig


class NonFinite(Exception):
    """`what` (a loss, a weight) is NaN or infinite at `step`."""

    def __init__(self, what: str, step: int):
        super().__init__(f"{what} at step {step}")
        self.what, self.step = what, step


@contextmanager
def refuse_divergence(cfg: TrainConfig) -> Iterator[None]:
    """Report a NonFinite raised in the block as the user error it is, with the recipe's fix."""
    try:
        yield
    except NonFinite as e:
        raise UserError(divergence_message(e, cfg)) from None


def divergence_message(error: NonFinite, cfg: TrainConfig) -> str:
    fix = f"lower train.learning_rate (now {cfg.learning_rate:g})"
    if cfg.mixed_precision == "fp16":
        fix += " or use train.mixed_precision: bf16 or no (fp16 overflows where they do not)"
    return f"train.learning_rate: {error}: training diverged and the model is not saved; {fix}"
