"""Continuous batching across the support matrix's decoder families (tests/models/zoo.py, built tiny from config):
rows that join a running batch at different steps answer as each request alone, whatever the family's positions
(rotary, partial rotary, learned), attention (grouped, multi-query, fused) or experts; families whose cache is not a
full one (sliding windows) are left to the dynamic batcher."""

from __future__ import annotations

import pytest
import torch

from ftcore.serving.decoding import DecodeBatch, Row
from ftcore.serving.kv_cache import keeps_full_cache
from tests.ftcore.test_decoding import alone, prompts, run
from tests.models.zoo import FAMILIES

DECODERS = [f for f in FAMILIES if f.kind == "decoder" and not f.head]


def tiny(family):
    import transformers

    config = getattr(transformers, family.config_class)(**{**family.config, "vocab_size": 512, "pad_token_id": 0})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    for p in model.parameters():  # sharp logits: a wrong position or mask changes the tokens
        p.data.normal_(0, 0.5 if p.dim() > 1 else 0.1)
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.parametrize("family", DECODERS, ids=[f.name for f in DECODERS])
def test_rows_joining_at_different_steps_answer_as_alone(family):
    model = tiny(family)
    if not keeps_full_cache(model.config):
        assert family.config.get("sliding_window"), family.name
        return
    asked, lengths = prompts(4, seed=3), [9, 2, 70, 5]  # 70: past the cache's spare columns
    rows = [Row(key=i, prompt=p, max_new_tokens=n) for i, (p, n) in enumerate(zip(asked, lengths, strict=True))]
    run(DecodeBatch(model), {0: rows[:2], 3: rows[2:3], 6: rows[3:]})
    for row, prompt, n in zip(rows, asked, lengths, strict=True):
        assert row.tokens == alone(model, prompt, n), row.key
