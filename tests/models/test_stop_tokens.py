"""Answers end at the model's end-of-turn token, not only at its EOS: a real folder lists its chat template's stop
tokens in generation_config.json (Llama 3.1's: ids 128001, 128008 and 128009, `<|eot_id|>`), and a chat model stops
its answer with `<|eot_id|>`, which the loss mask teaches it (tests/models/test_loss_mask.py)."""

from __future__ import annotations

import json

import pytest

from ftcore.models.generate import stop_token_ids
from ftcore.serving.engine import Completion, load_engine
from tests.models.zoo import folder, templates_available, vocabularies_fetched

pytestmark = pytest.mark.skipif(not (vocabularies_fetched() and templates_available()),
                                reason="needs the zoo's tokenizer files (make zoo-fetch) and ../shared")


def test_stop_tokens_are_the_eos_and_the_generation_configs_end_of_turn_tokens() -> None:
    engine = load_engine(folder("llama3"), "llama3", "1")
    listed = json.loads((folder("llama3") / "generation_config.json").read_text())["eos_token_id"]
    stops = stop_token_ids(engine.model, engine.tokenizer)
    assert stops == [engine.tokenizer.eos_token_id, *(i for i in listed if i != engine.tokenizer.eos_token_id)]
    assert engine.tokenizer.convert_tokens_to_ids("<|eot_id|>") in stops


def test_an_answer_is_cut_at_its_end_of_turn_token() -> None:
    engine = load_engine(folder("llama3"), "llama3", "1")
    tokenizer = engine.tokenizer
    answer = tokenizer("blood pressure", add_special_tokens=False)["input_ids"]
    after = tokenizer("<|start_header_id|>user", add_special_tokens=False)["input_ids"]
    done = engine._finish(Completion(prompt="", max_new_tokens=50), [*answer, tokenizer.convert_tokens_to_ids(
        "<|eot_id|>"), *after], tokens_in=3)
    assert (done.text, done.finish_reason, done.tokens_out) == ("blood pressure", "stop", len(answer) + 1)
