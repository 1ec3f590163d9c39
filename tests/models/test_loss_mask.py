"""The loss mask of `data.format: messages` under every decoder family's real chat template (issue 22).

ftflow renders each chat with the tokenizer's chat template and puts the loss on the assistant turns only
(ftcore/training/examples.py `chat_example`). Here, for every decoder family of the model zoo (real tokenizers, the
families' real templates; families without one get ftflow's default template through `load_tokenizer`), the tokens
whose mask bit is 1 are decoded and must be exactly each assistant turn's content, as the template renders it
(trimmed where the template trims), followed by the end-of-turn marker the model must learn to stop with: nothing
of the user or system turns, of the role headers, or of the whitespace the template writes after the marker.

The zoo saves the template files of ../shared/data/chat_templates as they are laid out (indented, one tag a line),
which renders stray indentation and newlines between turns; the files' own README strips that layout
(`.replace('    ', '').replace('\\n', '')`) before use, as real tokenizers carry them. Both layouts are tested.
Tokenizers only, no weights, apart from one tiny GPT-2 for the collator test.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from types import SimpleNamespace

import pytest

from ftcore.errors import DataError
from ftcore.models.load import DEFAULT_CHAT_TEMPLATE, load_tokenizer, render_chat
from ftcore.training.examples import chat_example
from tests.models.zoo import BY_NAME, FAMILIES, TEMPLATES, folder, templates_available

pytestmark = pytest.mark.skipif(not templates_available(), reason="../shared (the chat templates) is absent")

DECODERS = [family.name for family in FAMILIES if family.kind == "decoder"]

# The end-of-turn marker each template writes after an assistant turn's content, as its model card documents it: the
# test derives the marker from the rendered template and checks it against this table, so that a derivation gone
# wrong (finding nothing, or a header) cannot pass. EOS: the tokenizer's end-of-sequence token. Falcon's template
# ends a turn with nothing at all: the next turn's "\n\nUser:" is the only boundary (its models stop on EOS or a
# stop string).
EOS = object()
END_OF_TURN = {
    "llama-3-instruct.jinja": "<|eot_id|>",
    "qwen2.5-instruct.jinja": "<|im_end|>",
    "chatml.jinja": "<|im_end|>",
    "mistral-instruct.jinja": "</s>",
    "gemma-it.jinja": "<end_of_turn>",
    "phi-3.jinja": "<|end|>",
    "zephyr.jinja": EOS,
    "falcon-instruct.jinja": "",
    None: EOS,  # ftflow's DEFAULT_CHAT_TEMPLATE: each turn ends with EOS
}

# Contents with leading and trailing spaces and newlines, non-ASCII text and digits. No content is part of another
# (so that what leaked from a user or system turn would show), and none holds a blank line (Falcon's template
# rewrites those).
SYSTEM = {"role": "system", "content": "  You are terse; reply in kind.\n"}
USER_1 = {"role": "user", "content": " Сколько будет 2+2?\n"}
ANSWER_1 = {"role": "assistant", "content": "\n  Четыре: 4 ✓  \n"}
USER_2 = {"role": "user", "content": "And 3×3? "}
ANSWER_2 = {"role": "assistant", "content": " Nine (9), i.e. «девять».\n"}
USER_3 = {"role": "user", "content": "\tMerci! 10/10"}
ANSWER_3 = {"role": "assistant", "content": "De rien — 42 × 2 = 84 🙂 "}
CHATS = {
    "single": [USER_1, ANSWER_1],
    "multi": [USER_1, ANSWER_1, USER_2, ANSWER_2, USER_3, ANSWER_3],
    "system": [SYSTEM, USER_1, ANSWER_1, USER_2, ANSWER_2],
}


def compact(template: str) -> str:
    """The template as its README says to use it: without the one-tag-a-line layout."""
    return template.replace("    ", "").replace("\n", "")


def laid_out(file: str | None) -> bool:
    """A template file laid out for reading: jinja tags on lines of their own, no `{%-` whitespace control (Qwen's
    file has that, and newlines inside its strings, so it is used as it is)."""
    return file is not None and templates_available() and "{%-" not in (TEMPLATES / "chat_templates" / file).read_text()


@cache
def tokenizer_of(name: str):
    """The family's tokenizer as ftflow loads it (a pad token, the default template where it has none), loaded once:
    a test that changes its template puts the template back."""
    return load_tokenizer(folder(name))


@contextmanager
def template(tokenizer, chat_template: str):
    """The tokenizer with another chat template for the block (cheaper than copying a 256k-token vocabulary)."""
    saved, tokenizer.chat_template = tokenizer.chat_template, chat_template
    try:
        yield tokenizer
    finally:
        tokenizer.chat_template = saved


def cases():
    for name in DECODERS:
        for layout in ["as_saved", "compact"] if laid_out(BY_NAME[name].chat_template) else ["as_saved"]:
            for chat in CHATS:
                yield pytest.param(name, layout, chat, id=f"{name}-{layout}-{chat}")


def masked_runs(example: dict[str, list[int]]) -> list[list[int]]:
    """The token ids of each run of consecutive tokens whose mask bit is 1."""
    runs, run = [], []
    for token, bit in zip(example["input_ids"], example["assistant_masks"], strict=True):
        if bit:
            run.append(token)
        elif run:
            runs, run = [*runs, run], []
    return [*runs, run] if run else runs


def trims(tokenizer) -> bool:
    """Whether the template trims the answers it renders (Llama 3's, Gemma's, Mistral's do; Qwen's does not)."""
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": " \nPROBE\n "}]
    return " \nPROBE\n " not in render_chat(tokenizer, chat)


def expected_turn(tokenizer, chat: list[dict[str, str]], i: int) -> tuple[str, str, str]:
    """What the template writes for the assistant turn chat[i], read off the template's rendering: the text between
    the generation prompt and the content (whitespace at most, e.g. Mistral's and Falcon's space; None where the
    generation prompt is not where the rendered turn's header ends), the content as rendered, and the end-of-turn
    marker (what follows the content, up to the whitespace before the next turn)."""
    before = render_chat(tokenizer, chat[:i])
    prompt = render_chat(tokenizer, chat[:i], generation_prompt=True)
    through = render_chat(tokenizer, chat[: i + 1])
    rendered = chat[i]["content"].strip() if trims(tokenizer) else chat[i]["content"]
    at = through.rfind(rendered)
    assert at >= len(before), f"the content of turn {i} is not in the rendered turn {through[len(before):]!r}"
    glue = through[len(prompt):at] if through.startswith(prompt) else None
    return glue, rendered, through[at + len(rendered):].rstrip()


@pytest.mark.parametrize(("name", "layout", "chat_name"), list(cases()))
def test_the_loss_is_on_each_assistant_answer_and_its_end_of_turn_marker_only(name, layout, chat_name):
    tokenizer = tokenizer_of(name)
    saved = tokenizer.chat_template
    with template(tokenizer, compact(saved) if layout == "compact" else saved):
        check_mask(name, tokenizer, CHATS[chat_name])


def check_mask(name: str, tokenizer, chat: list[dict[str, str]]) -> None:
    example = chat_example(chat, tokenizer)
    runs = masked_runs(example)
    answers = [i for i, message in enumerate(chat) if message["role"] == "assistant"]
    assert len(runs) == len(answers), [tokenizer.decode(run) for run in runs]

    marker = END_OF_TURN[BY_NAME[name].chat_template]
    marker = tokenizer.eos_token if marker is EOS else marker
    for run, i in zip(runs, answers, strict=True):
        glue, rendered, end_of_turn = expected_turn(tokenizer, chat, i)
        assert end_of_turn == marker
        trained_on = tokenizer.decode(run)
        answer = rendered + end_of_turn
        if glue is None:  # the generation prompt is laid out differently from the turn: whitespace may differ
            assert trained_on.endswith(answer) and not trained_on[: -len(answer)].strip(), trained_on
        else:
            assert not glue.strip(), glue  # never a header
            # SentencePiece decoders drop the space that starts a decoded text (Mistral's " " before the answer).
            assert trained_on in (glue + answer, (glue + answer).removeprefix(" ")), trained_on
    trained_on = tokenizer.decode([t for run in runs for t in run])
    for message in chat:
        if message["role"] != "assistant":
            assert message["content"].strip() not in trained_on


@pytest.mark.parametrize("name", DECODERS)
def test_the_chat_is_tokenised_as_the_template_writes_it_one_bos_at_most(name):
    """The template writes BOS where its model wants one; the tokenizer must not add another."""
    tokenizer = tokenizer_of(name)
    chat = CHATS["system"]
    text = render_chat(tokenizer, chat)
    ids = chat_example(chat, tokenizer)["input_ids"]
    bos = tokenizer.bos_token
    if bos is not None:
        assert ids.count(tokenizer.bos_token_id) == text.count(bos)
        if text.lstrip().startswith(bos) and bos != tokenizer.eos_token:
            assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")  # nothing added or lost


def test_a_token_merging_the_header_newline_with_the_answer_is_cut_at_the_turn_edge():
    """Qwen's header ends with a newline and an answer that starts with one merges with it into one token ("\\n\\n")
    when the chat is tokenised whole: the chat is tokenised in pieces there, so the prompt ends as it does when the
    model is asked and the answer's newline gets the loss."""
    tokenizer = tokenizer_of("qwen2")
    chat = [USER_1, {"role": "assistant", "content": "\nline two"}]
    text = render_chat(tokenizer, chat)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "\n\n" in tokenizer.batch_decode([[t] for t in whole])  # the merge this guards against
    example = chat_example(chat, tokenizer)
    prompt = render_chat(tokenizer, chat[:1], generation_prompt=True)
    asked = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert example["input_ids"][: len(asked)] == asked
    assert example["assistant_masks"][: len(asked)] == [0] * len(asked)
    assert tokenizer.decode([t for t, bit in zip(example["input_ids"], example["assistant_masks"], strict=True)
                             if bit]) == "\nline two<|im_end|>"


# Qwen3's layout when thinking is off: the generation prompt adds an empty think block that the rendered turn lacks.
THINK_OFF = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)


def test_a_generation_prompt_that_differs_from_the_rendered_turn_starts_the_answer_where_the_two_part():
    with template(tokenizer_of("qwen3"), THINK_OFF) as tokenizer:
        assert "<think>" in render_chat(tokenizer, [USER_1], generation_prompt=True)
        runs = masked_runs(chat_example(CHATS["multi"], tokenizer))
        assert [tokenizer.decode(run) for run in runs] == [
            m["content"] + "<|im_end|>" for m in CHATS["multi"] if m["role"] == "assistant"]


# Gemma's own template (google/gemma-2-*-it, gemma-3), which refuses a system message; the zoo's gemma-it.jinja
# folds it into the first user turn instead.
GEMMA_OWN = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def test_a_template_that_refuses_a_system_message_is_a_one_line_data_error_saying_what_to_do():
    with template(tokenizer_of("gemma2"), GEMMA_OWN) as tokenizer:
        assert chat_example(CHATS["multi"], tokenizer)["assistant_masks"].count(1) > 0  # without one it trains
        with pytest.raises(DataError) as refused:
            chat_example(CHATS["system"], tokenizer)
    message = str(refused.value)
    assert "\n" not in message
    assert str(folder("gemma2")) in message and "System role not supported" in message
    assert "drop the system message or fold it into the first user turn" in message


@pytest.mark.parametrize("name", ["llama3", "mistral", "phi3"])
def test_turns_that_do_not_alternate_are_a_one_line_data_error_saying_what_to_do(name):
    """The zoo's templates refuse two user turns in a row; the error names the row of the split it met."""
    import json

    import pandas as pd

    from ftcore.training.examples import language_examples

    rows = pd.DataFrame({"messages": [json.dumps(CHATS["single"]), json.dumps([SYSTEM, USER_1, USER_2, ANSWER_1])]})
    with pytest.raises(DataError) as refused:
        language_examples(rows, tokenizer_of(name), 512, [])
    message = str(refused.value)
    assert "\n" not in message and str(folder(name)) in message and "(row 1 of the split)" in message
    assert "roles must alternate" in message and "merge consecutive turns" in message
    assert "fold it into the first user turn" not in message  # the system message is not what it refuses


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_the_end_of_turn_token_gets_the_loss_through_the_sft_collator_when_it_is_also_the_pad_token(
        tmp_path, packing):
    """GPT-2 has no chat template and no pad token: ftflow's default template ends each turn with EOS, and EOS pads
    batches. The labels that reach the model (TRL's dataset preparation and the collator ftflow's SFT trainer uses,
    padded or packed) keep the EOS that ends each answer and ignore only the padding."""
    from datasets import Dataset

    from ftcore.models.load import load_model
    from ftcore.training.jobs import TrainerSetup
    from ftcore.training.trainers import language_model_trainer

    tokenizer = tokenizer_of("gpt2")
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE and tokenizer.pad_token_id == tokenizer.eos_token_id
    chats = [CHATS["single"], CHATS["multi"]]
    rows = Dataset.from_list([chat_example(chat, tokenizer) for chat in chats])
    shared = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, "max_steps": 1,
              "per_device_train_batch_size": 2, "bf16": False}
    run = SimpleNamespace(job=SimpleNamespace(train=SimpleNamespace(max_length=256, packing=packing)))
    trainer = language_model_trainer(TrainerSetup(load_model(folder("gpt2")), tokenizer, rows, None, shared, run))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])

    eos = tokenizer.eos_token_id
    labels, ids = batch["labels"], batch["input_ids"]
    answers = sum(message["role"] == "assistant" for chat in chats for message in chat)
    assert int((labels == eos).sum()) == answers  # every answer's EOS, and no padding
    if not packing:
        assert int(((ids == eos) & (labels == -100)).sum()) > 0  # the shorter row's padding: EOS ids, no loss
    learned = tokenizer.decode(labels[labels != -100].tolist())
    for chat in chats:
        for message in chat:
            if message["role"] == "assistant":
                assert message["content"] + tokenizer.eos_token in learned
            else:
                assert message["content"].strip() not in learned


@pytest.mark.parametrize(("name", "warned"), [("falcon", True), ("llama3", False), ("gpt2", False)])
def test_a_template_that_ends_answers_without_an_end_of_turn_token_is_warned_about(name, warned, caplog):
    """Falcon's template ends an answer with nothing: the model would never learn to stop, which the trainer says."""
    import json
    import logging

    import pandas as pd

    from ftcore.training.examples import language_examples

    rows = pd.DataFrame({"messages": [json.dumps(chat) for chat in CHATS.values()]})
    with caplog.at_level(logging.WARNING, logger="ftcore.training.examples"):
        language_examples(rows, tokenizer_of(name), 512, [])
    warnings = [r.getMessage() for r in caplog.records if "end-of-turn" in r.getMessage()]
    assert len(warnings) == warned
    if warned:
        assert str(folder(name)) in warnings[0] and "does not learn to stop" in warnings[0]
