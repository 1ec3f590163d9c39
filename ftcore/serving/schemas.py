"""Request and response bodies of the HTTP API: the OpenAI completions and chat completions subset, and classify.
They are also what the OpenAPI spec (`GET /openapi.json`) documents."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _encodable(text: str) -> str:
    """JSON may spell a lone UTF-16 surrogate (\\ud800), which no tokenizer can encode: refused here, as a 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"holds an unpaired surrogate {text[e.start]!r} at character {e.start}: send valid "
                         "Unicode text") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class _Request(BaseModel):
    # OpenAI clients send fields ftflow has no use for (user, logit_bias, presence_penalty...): they are ignored,
    # as OpenAI-compatible servers do; fields that would change the answer's shape are refused below.
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="which version answers: left out (or the served model's name), the "
                                                "one serving; else NAME/VERSION, NAME@ALIAS or either with :VARIANT "
                                                "(GET /v1/models lists them)")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="a last chunk before [DONE] with the usage and no choices")


# OpenAI takes 4 stop strings; every one is searched for after every token, so their number is bounded.
MAX_STOPS = 16


class _Sampling(_Request):
    max_tokens: int = Field(16, ge=1, description="tokens to generate at most (capped by limits.max_new_tokens)")
    temperature: float = Field(1.0, ge=0, le=2, description="0 (below 1e-5): greedy and cached; as OpenAI, 1 by "
                                                            "default")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, description="a sampled answer's random seed: the same request with the same seed "
                                               "gets the same answer")
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOPS)] | None = Field(
        None, description=f"the answer ends before the first of these strings (at most {MAX_STOPS})")
    min_tokens: int = Field(0, ge=0, description="vLLM's extension: no stop token ends the answer before this many "
                                                 "tokens")
    ignore_eos: bool = Field(False, description="vLLM's extension: generate max_tokens tokens whatever the model "
                                                "ends with (load tests)")
    n: Literal[1] = Field(1, description="one answer per prompt")
    stream: bool = Field(False, description="server-sent events, OpenAI's chunks as tokens are generated, ending "
                                            "with `data: [DONE]`")
    stream_options: StreamOptions | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] = Field(description="a prompt, or a list of prompts answered together")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="data:image/png;base64,... (or jpeg, webp, gif), or an http(s) URL of a host the "
                                 "server fetches from (images.url_hosts)")
    detail: Literal["auto", "low", "high"] = Field("auto", description="accepted as OpenAI's; the model's "
                                                                       "processor decides the resolution")


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Text | list[ContentPart] = Field(description="text, or content parts: text, and images for a "
                                                          "vision-language model")


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class ClassifyRequest(_Request):
    input: Text | list[Text] = Field(description="a text, or a list of texts")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]


class _Answer(BaseModel):
    """What every completion response carries besides its choices."""

    id: str
    created: int
    model: str
    model_version: str
    usage: Usage


class CompletionResponse(_Answer):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class ChatResponse(_Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class Classification(BaseModel):
    index: int
    label: str
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["classification"] = "classification"
    model: str
    model_version: str
    data: list[Classification]
    usage: Usage


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    version: str
    kind: Literal["causal", "classifier"]
    images: bool = Field(description="whether chat messages may carry image_url parts (a vision-language model)")
    queued: int
    dtype: str = Field(description="the weights' type in memory (float32, bfloat16, float16)")
    prompting: Literal["messages", "prompt_completion", "raw"] = Field(
        description="how the model's training prompts were written: messages (chats), prompt_completion (one prompt "
                    "in a template), raw")


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    version: str
    variant: str
    aliases: list[str]
    serving: bool = Field(description="whether this is the version answering requests that name no model")
    adapter_of: str | None = Field(None, description="an adapter's base: the served model it is attached to")
    uri: str | None = Field(None, description="an adapter's registered model URI (its alias followed)")
    loaded: bool = Field(True, description="whether an adapter is attached now (an evicted one loads when asked for)")


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="what requests send as `model`: letters, digits, _ and -")
    uri: str = Field(description="models:/MODEL@ALIAS (followed when the alias moves) or models:/MODEL/VERSION")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# The error responses every API route documents in the OpenAPI spec.
ERRORS: dict[int | str, dict] = {code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 429, 500)}
