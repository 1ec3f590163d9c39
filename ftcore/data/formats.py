"""Canonical formats: a source's columns are mapped onto the columns of `data.format`, and each row's values are
checked. A row whose value cannot be used (a list where text belongs, a chat without an assistant turn) goes to the
quarantine with the column and the problem; a column that is missing altogether is an error naming the source and
the columns it does have.
"""

from __future__ import annotations

import json
import os
import reprlib
from collections.abc import Callable

import pandas as pd

from ftcore.columns import FORMAT_COLUMNS, IMAGES_COLUMN, LABEL_COLUMN
from ftcore.data.images import ImageReader, ImageUnusable, content_text, placed_images, with_placeholders
from ftcore.data.sources import ROW_ID, Chunk
from ftcore.data.sources.config import SourceBase
from ftcore.errors import DataError

COLLECT = "collect"
SOURCE = "source"
TASK = "task"  # objective multitask: the data.tasks entry a row belongs to
HOLDOUT = "holdout"  # the row comes from data.test_sources: it always lands in the test split
QUARANTINE_COLUMNS = {SOURCE: "str", ROW_ID: "int64", "raw": "str", "step": "str", "reason": "str"}
ASSISTANT_TURN = "\n\nAssistant:"
TURNS = ("\n\nHuman:", ASSISTANT_TURN)
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "bot": "assistant", "model": "assistant", "tool": "tool"}
RAW_CHARS = 500


class Unusable(ValueError):
    """A value that cannot be used in its column; the message is the quarantine reason."""


def to_canonical(chunk: Chunk, source: SourceBase, fmt: str, holdout: bool,
                 images: ImageReader | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(canonical rows, quarantined rows) of one chunk. Extra keys of `columns:` beyond the format's are kept as
    they are (e.g. `category: qtype`, for balancing by category). `images` stores the images of image_text rows."""
    rows = chunk.rows
    mapping = _column_mapping(source, fmt, rows)
    tag = source.name or chunk.origin
    malformed = pd.DataFrame([{SOURCE: tag, **bad, "step": COLLECT} for bad in chunk.bad],
                             columns=list(QUARANTINE_COLUMNS))
    if rows.empty:  # a chunk of only malformed lines has no columns to map
        return pd.DataFrame(), malformed
    _check_columns(rows, mapping, source, chunk.origin)
    converted, problems = {}, pd.Series("", index=rows.index, dtype=object)
    for canonical, column in mapping.items():
        values, reasons = _convert(rows[column], _converter(canonical, fmt, images, chunk))
        converted[canonical] = values
        problems = problems.where(problems != "", reasons.map(lambda r, c=canonical: f"{c}: {r}" if r else ""))
    frame = pd.DataFrame(converted, index=rows.index)
    if fmt == "preference" and source.derive_prompt:
        frame, problems = _derive_prompt(frame, problems)
    if fmt == "image_text":
        frame, problems = _image_chats(frame, problems, source)
    ok = problems == ""
    canonical = frame[ok].assign(**{SOURCE: tag, ROW_ID: rows.loc[ok, ROW_ID].astype("int64"), HOLDOUT: holdout})
    if source.task is not None:
        canonical[TASK] = source.task
    quarantined = pd.DataFrame({
        SOURCE: tag, ROW_ID: rows.loc[~ok, ROW_ID].astype("int64"),
        "raw": rows.loc[~ok].drop(columns=[ROW_ID]).apply(_raw, axis=1) if (~ok).any() else pd.Series(dtype=str),
        "step": COLLECT, "reason": problems[~ok]})
    return canonical.reset_index(drop=True), pd.concat([malformed, quarantined], ignore_index=True)


def _column_mapping(source: SourceBase, fmt: str, rows: pd.DataFrame) -> dict[str, str]:
    columns = FORMAT_COLUMNS[fmt]
    if fmt == "preference" and source.derive_prompt:
        columns = [c for c in columns if c != "prompt"]
    if fmt == "image_text" and "messages" not in source.columns and "messages" not in rows:
        # Images with a prompt (or the source's fixed one) and a completion: a caption, a transcription, an answer.
        columns = [IMAGES_COLUMN, *(["prompt"] if source.prompt is None else []), "completion"]
    mapping = {canonical: source.columns.get(canonical, canonical) for canonical in columns}
    return {**mapping, **{k: v for k, v in source.columns.items() if k not in mapping and k != "prompt"}}


def _check_columns(rows: pd.DataFrame, mapping: dict[str, str], source: SourceBase, origin: str) -> None:
    missing = [f"{canonical} (from column {col!r})" for canonical, col in mapping.items() if col not in rows.columns]
    if missing:
        found = ", ".join(str(c) for c in rows.columns if c != ROW_ID)
        example = ", ".join(f"{c}: <column>" for c in mapping)
        where = source.label() if source.label().endswith(origin) else f"{source.label()} ({origin})"
        raise DataError(f"{where}: missing {', '.join(missing)}; columns found: {found}. "
                        f"Map them with data.sources[].columns, e.g. columns: {{{example}}}")


def _convert(values: pd.Series, convert: Callable) -> tuple[pd.Series, pd.Series]:
    out, reasons = [], []
    for value in values:
        try:
            out.append(convert(value))
            reasons.append("")
        except (Unusable, ImageUnusable) as e:
            out.append(None)
            reasons.append(str(e))
        except RecursionError:  # a value nested deeper than Python can walk (or parse, for messages as JSON text)
            out.append(None)
            reasons.append("nested too deeply to read")
    return pd.Series(out, index=values.index, dtype=object), pd.Series(reasons, index=values.index, dtype=object)


def _converter(canonical: str, fmt: str, images: ImageReader | None, chunk: Chunk) -> Callable:
    if canonical == IMAGES_COLUMN:
        if images is None:
            raise ValueError("image_text rows are collected with an ImageReader")
        return lambda value: json.dumps(images.names(value, chunk.folder))
    if canonical == "messages":
        return as_image_messages if fmt == "image_text" else as_messages
    if canonical == LABEL_COLUMN:
        return _as_label
    return as_text if canonical in FORMAT_COLUMNS[fmt] else _as_scalar


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def as_text(value) -> str:
    """Text, or a number written as text; a missing value is empty text (drop_empty decides what to do with it)."""
    if _missing(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | bool):
        return str(value)
    raise Unusable(f"expected text, got {_kind(value)}")


def _as_label(value) -> str:
    if _missing(value) or value == "":
        raise Unusable("missing label")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a label column read with NaNs becomes float: 1.0 is the label "1"
    if isinstance(value, str | int | bool | float):
        return str(value)
    raise Unusable(f"a label is one value, got {_kind(value)}")


def _as_scalar(value) -> str:
    return "" if _missing(value) else str(value)


def as_image_messages(value) -> str:
    """`as_messages` whose contents may be lists of text and image parts, or text with `<image>` placeholders."""
    return as_messages(value, content_text)


def as_messages(value, content: Callable | None = None) -> str:
    """A chat as JSON: [{role, content}, ...] with roles system/user/assistant/tool. ShareGPT's {from, value} and
    roles human/gpt are accepted; at least one assistant turn is required (it is what the model learns).
    `content` turns a message's content into text (default: it must be text already)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Unusable("not a JSON list of messages") from None
    if hasattr(value, "tolist"):  # Parquet and Arrow give arrays
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise Unusable(f"expected a list of messages, got {_kind(value)}")
    messages = [_message(i, m, content) for i, m in enumerate(value)]
    if not any(m["role"] == "assistant" for m in messages):
        raise Unusable("no assistant message")
    return json.dumps(messages, ensure_ascii=False)


def _message(i: int, message, as_content: Callable | None) -> dict[str, str]:
    if not isinstance(message, dict):
        raise Unusable(f"message {i} is {_kind(message)}, expected {{role, content}}")
    role = message.get("role", message.get("from"))
    content = message.get("content", message.get("value"))
    if str(role).lower() not in ROLES:
        raise Unusable(f"message {i} has role {role!r}; expected one of {', '.join(sorted(set(ROLES.values())))}")
    if as_content is not None:
        try:
            content = as_content(content)
        except ImageUnusable as e:
            raise Unusable(f"message {i}: {e}") from None
    if not isinstance(content, str):
        raise Unusable(f"message {i} content is {_kind(content)}, expected text")
    return {"role": ROLES[str(role).lower()], "content": content}


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen answer, rejected answer) of two full dialogues that share their beginning: the prompt runs
    up to and including the last "Assistant:" turn both share (HH-RLHF's layout)."""
    shared = os.path.commonprefix([chosen, rejected])  # noqa: RUF071 - characters, not paths, on purpose
    cut = shared.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise Unusable("chosen and rejected share no dialogue ending in 'Assistant:'")
    end = cut + len(ASSISTANT_TURN)
    answers = chosen[end:].strip(), rejected[end:].strip()
    if answers[0] == answers[1]:
        raise Unusable("chosen and rejected answers are identical")
    for name, answer in zip(("chosen", "rejected"), answers, strict=True):
        # Learning an answer that writes the user's next turn teaches the model to talk for the user.
        if any(turn in answer for turn in TURNS):
            raise Unusable(f"the {name} answer runs on into further dialogue turns")
    return chosen[:end].lstrip(), *answers


def _derive_prompt(frame: pd.DataFrame, problems: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    parts, problems = [], problems.copy()
    for index, chosen, rejected in zip(frame.index, frame["chosen"], frame["rejected"], strict=True):
        try:
            parts.append(split_shared_prefix(chosen, rejected) if problems[index] == "" else ("", "", ""))
        except Unusable as e:
            problems[index] = f"derive_prompt: {e}"
            parts.append(("", "", ""))
    split = pd.DataFrame(parts, index=frame.index, columns=["prompt", "chosen", "rejected"], dtype=object)
    return frame.drop(columns=["chosen", "rejected"]).join(split)[
        ["prompt", "chosen", "rejected", *[c for c in frame.columns if c not in ("chosen", "rejected")]]], problems


def _image_chats(frame: pd.DataFrame, problems: pd.Series, source: SourceBase) -> tuple[pd.DataFrame, pd.Series]:
    """image_text rows as chats with one placeholder per image: a prompt/completion row becomes a user turn (the
    row's prompt or the source's) and an assistant turn; a chat's placeholders must match its images."""
    problems, chats = problems.copy(), []
    for index, row in frame.iterrows():
        if problems[index]:
            chats.append(None)
            continue
        if "messages" in frame:
            messages = json.loads(row["messages"])
        else:
            prompt = source.prompt if source.prompt is not None else row["prompt"]
            messages = [{"role": "user", "content": with_placeholders(prompt)},
                        {"role": "assistant", "content": row["completion"]}]
        try:
            chats.append(json.dumps(placed_images(messages, len(json.loads(row[IMAGES_COLUMN]))), ensure_ascii=False))
        except ImageUnusable as e:
            problems[index] = f"messages: {e}"
            chats.append(None)
    rest = [c for c in frame.columns if c not in (IMAGES_COLUMN, "messages", "prompt", "completion")]
    return frame.assign(messages=chats)[[IMAGES_COLUMN, "messages", *rest]], problems


def _kind(value) -> str:
    return f"a {type(value).__name__}"


def _raw(row: pd.Series) -> str:
    values = {k: _plain(v) for k, v in row.items()}
    try:
        return json.dumps(values, ensure_ascii=False, default=str)[:RAW_CHARS]
    except RecursionError:  # a value nested too deeply for JSON: its first levels are the text to keep
        return _shallow(values)[:RAW_CHARS]


def _shallow(values: dict) -> str:
    writer = reprlib.Repr()
    writer.maxlevel, writer.maxstring, writer.maxother = 20, RAW_CHARS, RAW_CHARS
    return writer.repr(values)


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value
