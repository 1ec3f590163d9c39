"""A conversation with a loaded engine in this process (`ftflow chat`): each message written as the model's
training prompts were, the earlier turns kept only for a model trained on chats (a prompt-trained model saw one
question at a time, so it is asked one at a time)."""

from __future__ import annotations

from ftcore.errors import UserError
from ftcore.models.prompting import ChatRefused
from ftcore.serving.engine import Completed, Completion, Engine


class Conversation:
    def __init__(self, engine: Engine, max_tokens: int, temperature: float = 0.0):
        if engine.kind != "causal":
            raise UserError(f"MODEL_URI: {engine.name} v{engine.version} is a classifier, it does not chat; serve it "
                            "with `ftflow serve` and POST /v1/classify")
        try:  # a model that refuses any chat is refused before the first question, not after it
            engine.render_chat([{"role": "user", "content": ""}])
        except ChatRefused as e:
            raise UserError(f"MODEL_URI: {engine.name} v{engine.version}: {e} (`ftflow serve`)") from None
        self.engine, self.max_tokens, self.temperature = engine, max_tokens, temperature
        self.messages: list[dict[str, str]] = []

    def describe(self) -> str:
        """One line on how messages reach the model."""
        p = self.engine.prompting
        if p.multi_turn:
            return "trained on chats: the conversation is kept"
        return f"trained on single prompts written as {p.prompt_template!r}: each message is asked on its own"

    def ask(self, text: str) -> Completed:
        turn = {"role": "user", "content": text}
        messages = [*self.messages, turn] if self.engine.prompting.multi_turn else [turn]
        prompt = self.engine.render_chat(messages)
        [answer] = self.engine.complete([Completion(prompt=prompt, max_new_tokens=self.max_tokens,
                                                    temperature=self.temperature)])
        self.messages = [*messages, {"role": "assistant", "content": answer.text.strip()}]
        return answer

    def clear(self) -> None:
        self.messages = []
