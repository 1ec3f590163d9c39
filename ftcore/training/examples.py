"""Split rows -> what the trainer consumes, per trainer of the objective table (docs/training.md):

- `sft` / `multitask` on prompt_completion: `prompt`/`completion` text; TRL tokenises them and puts the loss on the
  completion tokens only.
- `sft` / `multitask` on messages: each chat rendered with the tokenizer's chat template (ftcore.models.load supplies
  one where the tokenizer has none) and tokenised here, with a mask that puts the loss on every assistant turn.
- `dapt`: raw `text`; TRL tokenises it (EOS appended) and trains on every token, packed when train.packing is on.
- `classification`: `text` tokenised here with the class id as `labels`.
- `dpo`, `reward_model`: `prompt`/`chosen`/`rejected` text; TRL tokenises each pair.
- `rl`: the `prompt` to sample answers to, with the columns the reward functions see (the reference answer as
  `reference`, or `chosen`/`rejected`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ftcore.errors import DataError, UserError
from ftcore.models.load import render_chat

log = logging.getLogger(__name__)
TRAIN_COLUMNS = {"prompt_completion": ["prompt", "completion"], "text": ["text"],
                 "preference": ["prompt", "chosen", "rejected"]}


def read_split(path: Path | None) -> pd.DataFrame | None:
    """The split's rows, or None when there is no such split or it is empty."""
    if path is None:
        return None
    rows = pd.read_parquet(path)
    return rows if len(rows) else None


def language_examples(rows: pd.DataFrame, tokenizer, max_length: int, classes: list[str]):
    """Chats tokenised with their assistant masks, prompt/completion text, or raw text (the format's columns)."""
    from datasets import Dataset

    if "messages" in rows:
        examples = [chat_example(json.loads(chat), tokenizer) for chat in rows["messages"]]
        check_room_for_answers([first_answer_token(e["assistant_masks"]) for e in examples], max_length)
        return Dataset.from_list(examples)
    if "prompt" not in rows:
        return Dataset.from_pandas(rows[TRAIN_COLUMNS["text"]], preserve_index=False)
    check_room_for_answers(prompt_lengths(rows, tokenizer), max_length)
    return Dataset.from_pandas(rows[TRAIN_COLUMNS["prompt_completion"]], preserve_index=False)


def class_examples(rows: pd.DataFrame, tokenizer, max_length: int, classes: list[str]):
    from datasets import Dataset

    return Dataset.from_dict(encode_classes(rows, tokenizer, max_length, classes))


def pair_examples(rows: pd.DataFrame, tokenizer, max_length: int, classes: list[str]):
    from datasets import Dataset

    check_room_for_answers(prompt_lengths(rows, tokenizer), max_length)
    return Dataset.from_pandas(rows[TRAIN_COLUMNS["preference"]], preserve_index=False)


def prompt_examples(rows: pd.DataFrame, tokenizer, max_length: int, classes: list[str]):
    """The prompts to sample answers to, with the columns the reward functions see."""
    from datasets import Dataset

    from ftcore.alignment.rewards import reward_columns

    check_room_for_answers(prompt_lengths(rows, tokenizer), max_length)
    prompts = rows[["prompt"]].reset_index(drop=True)
    return Dataset.from_pandas(pd.concat([prompts, reward_columns(rows)], axis=1), preserve_index=False)


def prompt_lengths(rows: pd.DataFrame, tokenizer) -> list[int]:
    return [len(ids) for ids in tokenizer(rows["prompt"].tolist(), add_special_tokens=False)["input_ids"]]


def first_answer_token(mask: list[int]) -> int:
    return next((i for i, bit in enumerate(mask) if bit), len(mask))


# Rows whose prompt fills train.max_length have no answer token left to learn from; the trainer drops them. A few
# outliers are dropped with a warning; more than this share means max_length is wrong for the data.
MAX_SHARE_WITHOUT_ROOM = 0.01


def check_room_for_answers(prompt_tokens: list[int], max_length: int) -> None:
    """Refuse a max_length that leaves no room for the answer in more than 1% of the rows (warn below that)."""
    too_long = sorted(n for n in prompt_tokens if n >= max_length)
    if not too_long:
        return
    share = len(too_long) / len(prompt_tokens)
    message = (f"train.max_length: {max_length} tokens leaves no room for the answer after the prompt in "
               f"{len(too_long)} of {len(prompt_tokens)} rows (prompts up to {too_long[-1]} tokens)")
    if share > MAX_SHARE_WITHOUT_ROOM:
        needed = sorted(prompt_tokens)[int(0.99 * (len(prompt_tokens) - 1))] + 32
        raise UserError(f"{message}; raise max_length (to about {needed} for 99% of the rows and a 32-token answer) "
                        "or shorten the prompts")
    log.warning("%s: those rows are left out of training", message)


def encode_classes(rows: pd.DataFrame, tokenizer, max_length: int, classes: list[str]) -> dict[str, list]:
    ids = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(rows["label"].astype(str)) - set(ids))
    if unknown:
        raise DataError(f"labels {unknown} are not among the model's classes {classes} (the classes of the train "
                        "split the init stage saw); re-run from the clean_balance stage")
    encoded = tokenizer(rows["text"].astype(str).tolist(), truncation=True, max_length=max_length)
    return {**encoded, "labels": [ids[str(label)] for label in rows["label"]]}


def chat_example(messages: list[dict[str, str]], tokenizer) -> dict[str, list[int]]:
    """`input_ids` of the rendered chat and `assistant_masks`, 1 on the tokens of every assistant turn.

    The turns are found by rendering the chat up to each assistant turn (with the generation prompt) and through
    it: the characters in between are that turn's answer and end-of-turn tokens. This works for any template whose
    renderings of a longer chat extend those of a shorter one, unlike `return_assistant_tokens_mask`, which needs
    `{% generation %}` markers that few templates have."""
    if not tokenizer.is_fast:
        raise DataError("data.format messages: the tokenizer has no fast (Rust) version, which locating the assistant "
                        "turns needs (character offsets); use a model folder with tokenizer.json")
    text = render_chat(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render_chat(tokenizer, messages[:i], generation_prompt=True))
        end = len(render_chat(tokenizer, messages[: i + 1]))
        if text[:end] != render_chat(tokenizer, messages[: i + 1]) or start > end:
            raise DataError("the tokenizer's chat template renders a chat differently from its beginning, so the "
                            "assistant turns cannot be located; give a tokenizer whose template renders turns in "
                            "order")
        spans.append((start, end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= first < e for s, e in spans)) for first, _ in encoded["offset_mapping"]]
    return {"input_ids": encoded["input_ids"], "assistant_masks": mask}
