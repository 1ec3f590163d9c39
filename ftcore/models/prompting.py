"""How a model's training examples presented prompts, recorded beside its weights (`prompting.json` in the model
folder, written by the train stage), so that whoever asks the model later asks it the same way: a chat through the
tokenizer's chat template (data.format messages), one prompt written in the recipe's prompt template
(prompt_completion), or raw text no template can reconstruct.

The file travels with the folder: a registered version, its fetched copy and a plain folder all carry it. A folder
without it (trained before ftflow recorded it, or not by ftflow) falls back on its tokenizer: a chat template of its
own is trusted, ftflow's default one (load.DEFAULT_CHAT_TEMPLATE, added to every tokenizer that had none) is not,
because a model that never saw it answers such chats with noise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from ftcore.models.load import DEFAULT_CHAT_TEMPLATE, render_chat
from ftcore.schema import Strict

RECORD = "prompting.json"
COMPLETIONS = "/v1/completions"


class ChatRefused(ValueError):
    """A chat the model was not trained to answer; the message says what to send instead."""


class Prompting(Strict):
    format: Literal["messages", "prompt_completion", "raw"] = Field(
        description="messages: chats through the tokenizer's chat template; prompt_completion: one prompt in "
                    "prompt_template; raw: text without a template")
    prompt_template: str | None = None
    completion_template: str | None = None

    def chat_prompt(self, tokenizer, messages: list[dict[str, str]], instead: str = f"POST {COMPLETIONS}") -> str:
        """The chat as the model saw its training prompts, ending where its answer starts; ChatRefused when the
        model never saw anything like it, whose message says to `instead` (how this caller takes plain prompts)."""
        if self.format == "messages":
            return render_chat(tokenizer, messages, generation_prompt=True)
        if self.format == "prompt_completion" and self.prompt_template is not None:
            if [m["role"] for m in messages] != ["user"]:
                raise ChatRefused(
                    f"this model was trained on single prompts written as {self.prompt_template!r}, not on chats: "
                    f"send one user message, or {instead} with the prompt in that template")
            return self.prompt_template.replace("{prompt}", messages[0]["content"])
        raise ChatRefused(f"this model was trained on raw text, not on chats or a prompt template: {instead} with "
                          f"the text for it to continue")

    @property
    def multi_turn(self) -> bool:
        """Whether a conversation's earlier turns belong in the next prompt."""
        return self.format == "messages"


def prompting_of(format_: str, prompt_template: str | None, completion_template: str | None) -> Prompting:
    """The record for training data of `format_` whose prompts were written with these templates (None: as read)."""
    if format_ in ("messages", "image_text"):  # chats, about images or not: asked through the chat template
        return Prompting(format="messages")
    if prompt_template is None:
        return Prompting(format="raw")
    return Prompting(format="prompt_completion", prompt_template=prompt_template,
                     completion_template=completion_template)


def write_prompting(folder: Path, prompting: Prompting) -> None:
    (Path(folder) / RECORD).write_text(prompting.model_dump_json(indent=1))


def read_prompting(folder: Path, tokenizer) -> Prompting:
    """The folder's record; without one, what its tokenizer tells (see the module's docstring)."""
    path = Path(folder) / RECORD
    if path.is_file():
        return Prompting.model_validate(json.loads(path.read_text()))
    own_template = tokenizer.chat_template not in (None, DEFAULT_CHAT_TEMPLATE)
    return Prompting(format="messages" if own_template else "raw")
