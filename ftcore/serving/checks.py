"""What a request is checked against before it reaches the model, each failure a 4xx naming the field: the route
fits the model's kind, the number of inputs, the limits and the model's context (image tokens included), the
chat's images, and a chat the model (or the adapter's version) was trained on."""

from __future__ import annotations

import asyncio

from jinja2 import TemplateError

from ftcore.models.prompting import ChatRefused
from ftcore.serving.adapters import Target
from ftcore.serving.config import ServeConfig
from ftcore.serving.engine import Completion, Engine
from ftcore.serving.errors import ApiError
from ftcore.serving.images import Picture, image_urls, load_pictures
from ftcore.serving.schemas import ChatRequest, CompletionRequest


def causal(engine: Engine, path: str) -> Engine:
    if engine.kind != "causal":
        raise ApiError(400, f"{engine.name} v{engine.version} is a classifier: use POST /v1/classify, not {path}",
                       code="wrong_endpoint")
    return engine


def check_count(inputs: list[str], cfg: ServeConfig, param: str) -> None:
    if not inputs:
        raise ApiError(400, f"{param}: give at least one", param=param)
    if len(inputs) > cfg.limits.max_batch_inputs:
        raise ApiError(400, f"{param}: {len(inputs)} inputs in one request; the limit is "
                            f"{cfg.limits.max_batch_inputs} (limits.max_batch_inputs)", param=param,
                       code="too_many_inputs")


async def chat_pictures(engine: Engine, messages: list[dict], cfg: ServeConfig) -> list[Picture]:
    """The chat's images, decoded (an allowed remote one fetched first) on a thread of their own, so a slow fetch
    holds up neither the event loop nor the checking of other requests; 4xx for any the server will not take."""
    urls = image_urls(messages)
    if not urls:
        return []
    param = urls[0][0]
    if not engine.sees_images:
        raise ApiError(400, f"{param}: {engine.name} v{engine.version} reads text only; send text content, or serve "
                            "a vision-language model for images", param=param, code="images_not_supported")
    if len(urls) > cfg.images.max_images:
        raise ApiError(400, f"messages: {len(urls)} images in one request; the limit is {cfg.images.max_images} "
                            "(images.max_images)", param="messages", code="too_many_images")
    return await asyncio.to_thread(load_pictures, urls, cfg.images)


def rendered(target: Target, messages: list[dict]) -> str:
    """The chat written as the model's (or the adapter's version's) training prompts were. A model never trained on
    such chats refuses it (it would answer with noise), and so may a chat template (many insist that user and
    assistant alternate): either is the request's fault, a 400 saying what to send instead."""
    try:
        return target.engine.render_chat(messages, target.adapter.prompting if target.adapter else None)
    except ChatRefused as e:
        raise ApiError(400, f"messages: {target.name} v{target.version}: {e}", param="messages",
                       code="chat_not_trained") from None
    except TemplateError as e:
        raise ApiError(400, f"messages: the model's chat template refuses this chat ({e})", param="messages",
                       code="invalid_chat") from None


def params(name: str, value: str | list[str]) -> list[str]:
    """What an error names for each input: the field, or its item in a list (`prompt.2`)."""
    return [name] if isinstance(value, str) else [f"{name}.{i}" for i in range(len(value))]


def count_tokens(engine: Engine, text: str, param: str, pictures: list[Picture] | None = None) -> int:
    """The text's tokens (a chat's images as their image tokens), at least one: a model cannot run on none (a batch
    of one empty prompt failed, while padding hid it in a batch with others)."""
    try:
        tokens = engine.count_tokens(text, pictures) if pictures else engine.count_tokens(text)
    except ValueError as e:  # a processor's: the text names the image token, which stands for a sent image only
        raise ApiError(400, f"{param}: {str(e).rstrip('.')}; send each image as an image_url part and no image "
                            "token in the text", param=param, code="invalid_images") from None
    if tokens == 0:
        raise ApiError(400, f"{param}: the text is empty (0 tokens); give at least one token", param=param,
                       code="empty_input")
    return tokens


def completion(engine: Engine, prompt: str, param: str, body: CompletionRequest | ChatRequest,
                cfg: ServeConfig, pictures: list[Picture] | None = None, adapter: str | None = None) -> Completion:
    """The request checked against the limits and the model's context, image tokens included: a 400 names what was
    exceeded. Runs on the checking thread (ServerState.check)."""
    limits = cfg.limits
    if body.max_tokens > limits.max_new_tokens:
        raise ApiError(400, f"max_tokens: {body.max_tokens} is over the limit of {limits.max_new_tokens} "
                            "(limits.max_new_tokens)", param="max_tokens", code="max_tokens_exceeded")
    tokens = count_tokens(engine, prompt, param, pictures)
    if tokens > limits.max_prompt_tokens:
        raise ApiError(400, f"{param}: the prompt has {tokens} tokens; the limit is {limits.max_prompt_tokens} "
                            "(limits.max_prompt_tokens)", param=param, code="prompt_too_long")
    if tokens + body.max_tokens > engine.max_context:
        raise ApiError(400, f"the prompt's {tokens} tokens plus max_tokens {body.max_tokens} exceed the model's "
                            f"context of {engine.max_context} tokens", param="max_tokens",
                       code="context_length_exceeded")
    return Completion(prompt=prompt, max_new_tokens=body.max_tokens, temperature=body.temperature,
                      top_p=body.top_p, stop=body.stops(), images=tuple(pictures or ()), seed=body.seed,
                      min_tokens=body.min_tokens, ignore_eos=body.ignore_eos, adapter=adapter)
