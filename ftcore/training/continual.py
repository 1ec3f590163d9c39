"""Continual fine-tuning in the train stage (docs/continual.md): replaying retained rows among the new ones, and
a regulariser that pulls the trainable weights toward where they started (L2-SP, or EWC with a diagonal Fisher
estimated on the retained data)."""

from __future__ import annotations

import logging
from itertools import islice

import pandas as pd

from ftcore.errors import DataError, UserError
from ftcore.training.config import RegularizerConfig

log = logging.getLogger(__name__)


def with_replay(train: pd.DataFrame, retained: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, int]:
    """The train rows plus retained rows making up `share` of the result (drawn with replacement when the
    retained rows are fewer). The trainer shuffles them together, so each batch holds that share on average."""
    if share == 0:
        return train, 0
    columns = _format_columns(train)
    missing = [c for c in columns if c not in retained]
    if missing:
        raise DataError(f"continual.data: the retained rows lack {', '.join(missing)}, which this recipe's rows have "
                        f"(the retained data must be in the same data.format)")
    n = round(share / (1 - share) * len(train))
    replay = retained.sample(n=n, replace=n > len(retained), random_state=seed)
    return pd.concat([train, replay[columns]], ignore_index=True), n


def _format_columns(rows: pd.DataFrame) -> list[str]:
    """The columns a language-model objective trains on, by the rows' format (messages, prompt_completion, text)."""
    return next(columns for columns in (["messages"], ["prompt", "completion"], ["text"]) if columns[0] in rows)


def anchor_to_start(trainer, cfg: RegularizerConfig, fisher: dict | None = None) -> None:
    """Add `cfg.weight * sum(F * (w - w_start)^2)` over the trainable weights to the trainer's loss, F = 1 (L2-SP)
    or the normalised diagonal Fisher (EWC). The starting weights are taken now, before a resumed run loads its
    checkpoint, so a resumed run pulls toward the same point."""
    params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in params.items()}
    compute = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, **kwargs):
        result = compute(model, inputs, return_outputs=return_outputs, **kwargs)
        loss, outputs = result if return_outputs else (result, None)
        penalty = sum((((p - start[n]) ** 2) * (fisher[n] if fisher else 1)).sum() for n, p in params.items())
        loss = loss + cfg.weight * penalty
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = compute_loss


def diagonal_fisher(model, tokenizer, retained: pd.DataFrame, cfg: RegularizerConfig, batch_size: int,
                    seed: int) -> dict:
    """The empirical Fisher of each trainable weight (its mean squared gradient of the loss on retained rows),
    scaled to mean 1 so that `weight` means the same for ewc as for l2sp."""
    import torch

    prompts, completions = _pairs(retained.sample(frac=1.0, random_state=seed))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    from ftcore.models.generate import completion_batches

    model.eval()  # no dropout: the Fisher of the model as it predicts
    batches = 0
    for input_ids, attention, labels in islice(completion_batches(tokenizer, prompts, completions, batch_size),
                                               cfg.fisher_batches):
        model.zero_grad()
        model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
              labels=labels.to(model.device)).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
        batches += 1
    model.zero_grad()
    model.train()
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean() / batches
    if not torch.isfinite(mean) or mean == 0:
        raise UserError("continual.regularizer: ewc: the Fisher on the retained rows is zero (no gradient reaches "
                        "the trainable weights); use method: l2sp")
    log.info("ewc: diagonal Fisher from %d batches of retained rows", batches)
    return {n: f / batches / mean for n, f in fisher.items()}


def _pairs(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Prompt and completion of each retained row: raw text (dapt) is all completion."""
    if "prompt" in rows and "completion" in rows:
        return rows["prompt"].astype(str).tolist(), rows["completion"].astype(str).tolist()
    if "text" in rows:
        return [""] * len(rows), rows["text"].astype(str).tolist()
    raise UserError("continual.regularizer: ewc estimates its Fisher on prompt_completion or text rows; use "
                    "method: l2sp for chats")
