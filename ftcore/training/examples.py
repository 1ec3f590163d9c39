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

from ftcore.data.images import with_image_paths
from ftcore.errors import DataError, UserError, first_line
from ftcore.models.load import render_chat

log = logging.getLogger(__name__)
TRAIN_COLUMNS = {"prompt_completion": ["prompt", "completion"], "text": ["text"],
                 "preference": ["prompt", "chosen", "rejected"]}


def read_split(path: Path | None) -> pd.DataFrame | None:
    """The split's rows (images as file paths), or None when there is no such split or it is empty."""
    if path is None:
        return None
    rows = pd.read_parquet(path)
    return with_image_paths(rows, path) if len(rows) else None


def language_examples(rows: pd.DataFrame, tokenizer, max_length: int, classes: list[str]):
    """Chats tokenised with their assistant masks, prompt/completion text, or raw text (the format's columns)."""
    from datasets import Dataset

    if "messages" in rows:
        examples = [chat_example_of_row(i, chat, tokenizer) for i, chat in enumerate(rows["messages"])]
        check_room_for_answers([first_answer_token(e["assistant_masks"]) for e in examples], max_length)
        warn_without_end_of_turn(examples, tokenizer)
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
    """`input_ids` of the rendered chat and `assistant_masks`, 1 on the tokens of every assistant turn: its content
    as the template renders it (trimmed, if the template trims) and the end-of-turn marker the model must learn to
    stop with (`<|eot_id|>`, `<|im_end|>`, `</s>`, ...), not the role header before it or the whitespace after it.

    The turns are found by rendering the chat up to each assistant turn (with the generation prompt) and through
    it: what the turn adds after the prompt, less trailing whitespace, is that turn's answer and end-of-turn marker.
    This works for any template whose renderings of a longer chat extend those of a shorter one, unlike
    `return_assistant_tokens_mask`, which needs `{% generation %}` markers that few templates have. The chat is
    tokenised as the template wrote it (`add_special_tokens=False`: a template that writes BOS gets one BOS), and cut
    where a token would straddle a turn's edge (a BPE merge of the header's newline with the answer's), so that the
    prompt's tokens are those the model sees when asked and the answer's are those it must write."""
    if not tokenizer.is_fast:
        raise DataError("data.format messages: the tokenizer has no fast (Rust) version, which locating the assistant "
                        "turns needs (character offsets); use a model folder with tokenizer.json")
    from jinja2 import TemplateError

    try:
        text, spans = _assistant_spans(messages, tokenizer)
    except TemplateError as e:
        raise DataError(_refused(messages, tokenizer, e)) from None
    ids, offsets = _encode(tokenizer, text, spans)
    mask = [int(any(_overlaps(token, span) for span in spans)) for token in offsets]
    return {"input_ids": ids, "assistant_masks": mask}


def chat_example_of_row(row: int, chat: str, tokenizer) -> dict[str, list[int]]:
    try:
        return chat_example(json.loads(chat), tokenizer)
    except DataError as e:
        raise DataError(f"{e} (row {row} of the split)") from None


CHATS_CHECKED_FOR_END_OF_TURN = 16


def warn_without_end_of_turn(examples: list[dict[str, list[int]]], tokenizer) -> None:
    """Warn where the template ends an assistant turn with no special token (Falcon's ends it with nothing, the next
    turn's "User:" being the only boundary): a model trained on it does not learn to stop after its answer."""
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    for example in examples[:CHATS_CHECKED_FOR_END_OF_TURN]:  # one template renders every chat alike
        ids, mask = example["input_ids"], example["assistant_masks"]
        last = next((ids[k] for k in range(len(ids)) if mask[k] and (k + 1 == len(ids) or not mask[k + 1])
                     and ids[k] not in special), None)
        if last is not None:
            log.warning("data.format messages: the chat template of %s ends assistant turns without an end-of-turn "
                        "token (an answer ends with %r), so the model does not learn to stop after its answer; a "
                        "template that ends each turn with one (such as the tokenizer's eos_token %r) teaches it",
                        tokenizer.name_or_path, tokenizer.convert_ids_to_tokens(last), tokenizer.eos_token)
            return


def _assistant_spans(messages: list[dict[str, str]], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character span of each assistant turn in it."""
    text = render_chat(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(tokenizer, messages[:i], generation_prompt=True)
        through = render_chat(tokenizer, messages[: i + 1])
        if not text.startswith(through):
            raise DataError("data.format messages: the tokenizer's chat template renders a chat differently from its "
                            "beginning, so the assistant turns cannot be located; give a tokenizer whose template "
                            "renders turns in order")
        start = answer_start(prompt, through)
        spans.append((start, max(start, len(through.rstrip()))))
    return text, spans


def answer_start(prompt: str, through: str) -> int:
    """Where the answer starts in `through` (the chat through an assistant turn): where `prompt` (the chat before it
    with the generation prompt, what the model is asked with) ends. Templates whose generation prompt is not quite
    the rendered turn's header are met half way: where the two part, unless the rest of the generation prompt (an
    extra newline, a header the template lays out with other whitespace) shows up in the turn, then after it."""
    start = common_prefix_length(prompt, through)
    header = prompt[start:].strip()
    at = through.find(header, start) if header else -1
    if at < 0:
        return start
    after = at + len(header)
    return after + common_prefix_length(prompt[prompt.index(header, start) + len(header):], through[after:])


def common_prefix_length(a: str, b: str) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _refused(messages: list[dict[str, str]], tokenizer, error: Exception) -> str:
    """One line for a chat the template refuses (raise_exception in the template), saying what to change."""
    from jinja2 import TemplateError

    reason = first_line(error)
    without_system = [m for m in messages if m["role"] != "system"]
    try:
        system_refused = len(without_system) < len(messages) and bool(render_chat(tokenizer, without_system))
    except TemplateError:
        system_refused = False
    if system_refused:
        advice = "it takes no system message: drop the system message or fold it into the first user turn"
    elif "alternate" in reason:
        advice = ("make user and assistant turns alternate, starting with a user turn (merge consecutive turns of one "
                  "role)")
    else:
        advice = "give chats with the roles and order this template accepts, or a model whose template accepts them"
    return f"data.format messages: the chat template of {tokenizer.name_or_path} refuses a chat ({reason}); {advice}"


def _encode(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` with their character offsets, tokenised in pieces where a token straddles a span's edge.

    A piece after a cut is tokenised after a special token (then dropped), so that it is tokenised as text in the
    middle of the chat, not as the start of a text (where SentencePiece tokenizers add a space). Where pieces do not
    put the text back together (a tokenizer that adds a space after every special token), the chat's own
    tokenisation is kept and a straddling token counts as part of the turn."""
    whole = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = whole["input_ids"], [tuple(o) for o in whole["offset_mapping"]]
    cuts = sorted({edge for span in spans for edge in span if any(a < edge < b for a, b in offsets)})
    if not cuts:
        return ids, offsets
    pieced = _encode_pieces(tokenizer, text, cuts)
    if pieced is None or tokenizer.decode(pieced[0]) != tokenizer.decode(ids):
        return ids, offsets
    return pieced


def _encode_pieces(tokenizer, text: str, cuts: list[int]) -> tuple[list[int], list[tuple[int, int]]] | None:
    anchor = tokenizer.eos_token or tokenizer.bos_token
    if anchor is None:
        return None
    anchor_ids = tokenizer(anchor, add_special_tokens=False)["input_ids"]
    ids, offsets = [], []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        lead = "" if start == 0 else anchor
        encoded = tokenizer(lead + text[start:end], add_special_tokens=False, return_offsets_mapping=True)
        piece_ids, piece_offsets = encoded["input_ids"], encoded["offset_mapping"]
        if lead:
            if piece_ids[:len(anchor_ids)] != anchor_ids:
                return None
            piece_ids, piece_offsets = piece_ids[len(anchor_ids):], piece_offsets[len(anchor_ids):]
        shift = start - len(lead)
        ids += piece_ids
        offsets += [(a + shift, b + shift) for a, b in piece_offsets]
    return ids, offsets


def _overlaps(token: tuple[int, int], span: tuple[int, int]) -> bool:
    (a, b), (start, end) = token, span
    return max(a, start) < min(b, end) or (a == b and start <= a < end)
