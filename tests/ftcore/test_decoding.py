"""The continuous decode batch (ftcore/serving/decoding.py): rows join and leave at any step, and each row's answer is
the one its request gets alone."""

from __future__ import annotations

import random

import pytest
import torch

from ftcore.serving.decoding import DecodeBatch, Row


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                         initializer_range=0.5)  # sharp logits: a wrong position or mask changes the tokens
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # the references run to their length, as rows without stop tokens do
    return model


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 512) for _ in range(rng.randint(3, 30))] for _ in range(n)]


def alone(model, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def run(batch: DecodeBatch, joining: dict[int, list[Row]]) -> list[Row]:
    """Step the batch until it is empty, `joining[step]` joining before that step; the rows in finishing order."""
    finished, step = [], 0
    while batch or any(s >= step for s in joining):
        for row, _ in batch.join(joining.get(step, [])) + batch.step():
            if row.finished and row not in finished:
                finished.append(row)
        step += 1
    return finished


def test_greedy_rows_joining_at_different_steps_answer_as_each_request_alone(model):
    asked = prompts(6)
    lengths = [12, 3, 150, 7, 1, 80]  # past the cache's spare columns (kv_cache.SPARE): its buffers are refilled
    rows = [Row(key=i, prompt=p, max_new_tokens=n) for i, (p, n) in enumerate(zip(asked, lengths, strict=True))]
    finished = run(DecodeBatch(model), {0: rows[:2], 2: rows[2:3], 5: rows[3:5], 9: rows[5:]})
    assert sorted(r.key for r in finished) == list(range(6))
    for row, prompt, n in zip(rows, asked, lengths, strict=True):
        assert row.tokens == alone(model, prompt, n), row.key


def test_a_short_request_that_joins_later_finishes_before_a_long_one_started_earlier(model):
    long, short = Row(key="long", prompt=prompts(1, 1)[0], max_new_tokens=40), \
        Row(key="short", prompt=prompts(1, 2)[0], max_new_tokens=4)
    finished = run(DecodeBatch(model), {0: [long], 3: [short]})
    assert [r.key for r in finished] == ["short", "long"]


def test_a_seeded_row_samples_the_same_answer_alone_and_in_company(model):
    def sampled(company: int, seed: int = 7) -> list[int]:
        row = Row(key="me", prompt=prompts(1, 3)[0], max_new_tokens=16, temperature=0.9, top_p=0.9, seed=seed)
        others = [Row(key=i, prompt=p, max_new_tokens=10, temperature=1.0, seed=i) for i, p in
                  enumerate(prompts(company, 4))]
        run(DecodeBatch(model), {0: [row, *others[:1]], 2: others[1:]})
        return row.tokens

    assert sampled(0) == sampled(1) == sampled(5)
    assert len(sampled(0)) == 16 and sampled(0, seed=8) != sampled(0)  # it samples: another seed, another answer


def test_a_stop_token_ends_a_row_and_a_cancelled_row_leaves_at_once(model):
    prompt = prompts(1, 5)[0]
    first = alone(model, prompt, 6)
    stopper = Row(key="stop", prompt=prompt, max_new_tokens=6, stop_ids=frozenset({first[2]}))
    keeper = Row(key="keep", prompt=prompts(1, 6)[0], max_new_tokens=30)
    gone = Row(key="gone", prompt=prompts(1, 7)[0], max_new_tokens=30)
    batch = DecodeBatch(model)
    batch.join([stopper, keeper, gone])
    for _ in range(5):
        batch.step()
    assert stopper.stopped and stopper.tokens == first[:first.index(first[2])]
    batch.cancel("gone")
    assert [r.key for r in batch.rows] == ["keep"]
    while batch:
        batch.step()
    assert keeper.tokens == alone(model, keeper.prompt, 30)


def test_rows_of_different_adapters_share_the_batch_and_answer_as_each_adapter_alone(model):
    import copy

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)  # random B: adapters that differ
    torch.manual_seed(1)
    peft = get_peft_model(copy.deepcopy(model), lora, adapter_name="a")
    peft.add_adapter("b", lora)
    peft.eval()
    asked = prompts(6, 8)
    adapters = ["a", "b", None, "b", "a", None]
    rows = [Row(key=i, prompt=p, max_new_tokens=10, adapter=name) for i, (p, name) in
            enumerate(zip(asked, adapters, strict=True))]
    run(DecodeBatch(peft), {0: rows[:3], 4: rows[3:]})
    for row in rows:
        if row.adapter is None:
            with peft.disable_adapter():
                expected = alone(peft, row.prompt, 10)
        else:
            peft.set_adapter(row.adapter)
            expected = alone(peft, row.prompt, 10)
        assert row.tokens == expected, row.key
    assert len({tuple(r.tokens) for r in rows if r.prompt == asked[0]}) == 1
    with peft.disable_adapter():
        assert alone(peft, asked[0], 10) != rows[0].tokens  # the adapter changes the answer


def test_min_tokens_holds_back_the_stop_tokens_until_then(model):
    prompt = prompts(1, 5)[0]
    first = alone(model, prompt, 6)
    stop = frozenset({first[2]})
    early = Row(key="early", prompt=prompt, max_new_tokens=12, stop_ids=stop)
    held = Row(key="held", prompt=prompt, max_new_tokens=12, stop_ids=stop, min_tokens=8)
    run(DecodeBatch(model), {0: [early, held]})
    assert early.stopped and len(early.tokens) == first.index(first[2])
    assert len(held.tokens) >= 8 and first[2] not in held.tokens[:8] and held.tokens[:2] == first[:2]
