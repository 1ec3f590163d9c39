"""The HTTP API (FastAPI): OpenAI-compatible `POST /v1/completions` and `/v1/chat/completions`, `POST /v1/classify`,
`GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus), `GET /openapi.json`, and the playground page at `GET /`
(ftcore/serving/static/playground.html).

Every request goes through the same path: auth, limits, the response cache, the dynamic batcher, the model. A
chat's images (for a vision-language model) are decoded before its tokens are counted (ftcore/serving/images.py).
Every error is a JSON body `{"error": {"message", "type", "param", "code"}}` with a 4xx status when the request is at
fault; nothing a client sends can stop the server. docs/serving.md lists the status codes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftcore.errors import UserError
from ftcore.serving import checks
from ftcore.serving.adapters import AdapterSet, Target
from ftcore.serving.admin import add_admin_routes
from ftcore.serving.batcher import Batcher, Overloaded
from ftcore.serving.cache import ResponseCache, cache_key
from ftcore.serving.config import ServeConfig
from ftcore.serving.decode_loop import DecodeLoop
from ftcore.serving.engine import Completion, Engine
from ftcore.serving.errors import ApiError, error_body, error_response, validation_message
from ftcore.serving.images import Picture, content_text
from ftcore.serving.metrics import ServeMetrics
from ftcore.serving.middleware import Authenticate, ReadBody, RecordRequests
from ftcore.serving.models import ModelPicker
from ftcore.serving.request_log import CLIENT_CLOSED, RequestLog, RequestLogWriter, RequestRecord
from ftcore.serving.schemas import (
    ERRORS,
    ChatRequest,
    ChatResponse,
    ClassifyRequest,
    ClassifyResponse,
    CompletionRequest,
    CompletionResponse,
    Health,
    ModelList,
)
from ftcore.serving.source import AliasWatcher, ModelSource
from ftcore.serving.streaming import Chunks, EventStream, TextStream, event

log = logging.getLogger("ftflow.serve")
# Documents the token in the OpenAPI spec; it is checked before the body is read, by middleware.Authenticate.
BEARER = HTTPBearer(auto_error=False, description="required when the server has a token")
GENERATES = {**ERRORS, 200: {"content": {"text/event-stream": {}},
                             "description": "the answer; with `stream: true`, server-sent events (OpenAI's chunks)"}}


class ServerState:
    """What the handlers share: the engine serving now (swapped whole on reload), the other versions a request's
    `model` picks, the batcher, cache, metrics, request log, and the thread that checks requests."""

    def __init__(self, engine: Engine, cfg: ServeConfig, source: ModelSource):
        self.engine, self.cfg = engine, cfg
        self.picker = ModelPicker(source, cfg.max_models)
        self.metrics = ServeMetrics()
        self.metrics.serving(engine.name, engine.version)
        self.cache = ResponseCache(cfg.cache.max_entries)
        self.batcher = Batcher(run_batch, cfg.batching, on_batch=self.metrics.batch_size.observe)
        self.decoder = DecodeLoop(cfg.batching.max_batch_size if cfg.batching.enabled else 1,
                                  on_join=self.metrics.batch_size.observe, on_step=self.metrics.decode_rows.observe)
        self.log = RequestLogWriter(RequestLog(cfg.request_log.resolved_url()), cfg.request_log.sample_rate)
        # Counting a prompt's tokens takes about a second for 1 MB of text: done on the event loop, it would stall
        # every other client meanwhile. One thread, because the engine's checking tokenizer is not shared.
        self.checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftflow-checks")
        self.adapters = AdapterSet(engine, cfg.adapters.max_loaded, self.decoder.between_steps,
                                   self.decoder.adapters_in_use, engine.folder) if self.takes_adapters(engine) else None
        if self.adapters is not None:
            self.adapters.on_change = self.metrics.adapters.set

    def takes_adapters(self, engine: Engine) -> bool:
        """Whether LoRA adapters can be attached to the engine and share its decode batches: a causal text model
        loaded from its folder, batched continuously."""
        return (self.cfg.batching.continuous and self.cfg.variant == "model" and engine.decodes_continuously
                and not engine.sees_images and engine.folder is not None)

    async def engine_for(self, model: str | None) -> Engine:
        """The engine answering a request's `model` (left out: the one serving now)."""
        return await self.picker.engine(model, self.engine)

    async def target(self, model: str | None, request: Request) -> Target:
        """What answers a request's `model`: an adapter on the base (held until the request is over: the recorder
        releases it), or an engine."""
        adapters = self.adapters
        if adapters is not None and model in adapters.known:
            target = Target(adapters.engine, await adapters.acquire(model))
            request.state.adapter = target.adapter
            return target
        if adapters is not None and model and model not in self.picker.served_ids(self.engine) and \
                (("/" not in model and "@" not in model) or adapters.model_of(model)):  # can only be an adapter's
            raise adapters.unknown(model)
        return Target(await self.engine_for(model))

    async def check(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the checking thread; an ApiError it raises reaches the client."""
        return await asyncio.get_running_loop().run_in_executor(self.checker, fn)

    @property
    def queued(self) -> int:
        return self.batcher.queued + self.decoder.queued

    def submit(self, engine: Engine, item, on_token: Callable[[int], None] | None = None) -> Any:
        """The awaitable answer of one item: a text completion of a model that decodes continuously joins the decode
        loop (`on_token` then gets each token as it is chosen); the rest go to the dynamic batcher, whose answers
        come whole."""
        if (self.cfg.batching.continuous and isinstance(item, Completion) and not item.images
                and engine.decodes_continuously):
            return self.decoder.submit(engine, item, on_token)
        return self.batcher.submit((engine, item))

    def swap(self, engine: Engine) -> None:
        if self.adapters is not None and self.adapters.known:
            log.warning("%s: not serving version %s, since the adapters served are attached to version %s",
                        engine.name, engine.version, self.engine.version)
            return
        self.engine = engine
        self.metrics.serving(engine.name, engine.version)
        self.metrics.reloads.inc()


def run_batch(items: list[tuple[Engine, Any]]) -> list[Any]:
    """One batch on the model thread. Items carry the engine that checked them, so a batch that straddles a reload
    answers each request with the version it was admitted for."""
    results: list[Any] = [None] * len(items)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (engine, item) in enumerate(items):
        groups.setdefault((id(engine), isinstance(item, Completion)), []).append(i)
    for (_, completing), indices in groups.items():
        engine = items[indices[0]][0]
        payloads = [items[i][1] for i in indices]
        answers = engine.complete(payloads) if completing else engine.classify(payloads)
        for i, answer in zip(indices, answers, strict=True):
            results[i] = answer
    return results


def create_app(source: ModelSource, engine: Engine, cfg: ServeConfig, token: str | None,
               admin_token: str | None = None) -> FastAPI:
    """The app; the adapters `cfg.adapters.serve` names are attached before it is returned (UserError when one
    cannot be)."""
    state = ServerState(engine, cfg, source)
    if (cfg.adapters.serve or cfg.adapters.every_version) and state.adapters is None:
        flag = "--adapter" if cfg.adapters.serve else "--all-versions"
        raise UserError(f"{flag}: {engine.name} cannot take adapters: they need a causal text model served as it "
                        "was registered (variant model) with continuous batching (batching.continuous)")
    for name, uri in cfg.adapters.serve.items():
        state.adapters.preload(name, uri)  # type: ignore[union-attr]
    for model in cfg.adapters.every_version:
        state.adapters.adopt_versions(model)  # type: ignore[union-attr]
    watcher = AliasWatcher(source, lambda: state.engine.version, state.swap, cfg.reload_interval_s)
    app = FastAPI(title="ftflow serving", version="1", lifespan=_lifespan(state, watcher),
                  description="OpenAI-compatible completions, chat completions and classification of one "
                              "fine-tuned model. Errors: {\"error\": {\"message\", \"type\", \"param\", \"code\"}}.")
    app.state.ftflow = state
    app.state.watcher = watcher
    _install_error_handlers(app)
    _install_middleware(app, state, token, admin_token)
    # Registered in this order, which is also the OpenAPI spec's.
    _add_completion_routes(app, state)
    _add_classify_route(app, state)
    _add_status_routes(app, state)
    _add_playground(app, state)
    add_admin_routes(app, state)
    return app


def _lifespan(state: ServerState, watcher: AliasWatcher):
    """Starts the batcher and the alias watcher with the server; on shutdown stops them, then lets the checking
    thread finish and closes the request log."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await state.batcher.start()
        await state.decoder.start()
        watcher.start()
        following = None if state.adapters is None else \
            asyncio.ensure_future(state.adapters.follow_registry_every(state.cfg.reload_interval_s))
        yield
        if following is not None:
            following.cancel()
        watcher.stop()
        await state.decoder.stop()
        await state.batcher.stop()
        state.checker.shutdown(wait=True)
        state.log.close()

    return lifespan


def _install_middleware(app: FastAPI, state: ServerState, token: str | None, admin_token: str | None) -> None:
    limits = state.cfg.limits
    # The last added is the outermost: every request is recorded, refusals by the token and the body included.
    app.add_middleware(ReadBody, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.add_middleware(Authenticate, token=token, admin_token=admin_token)
    app.add_middleware(RecordRequests, record=_recorder(state))


def _add_completion_routes(app: FastAPI, state: ServerState) -> None:
    """POST /v1/completions and /v1/chat/completions: text generation, for causal models only."""

    @app.post("/v1/completions", response_model=CompletionResponse, responses=GENERATES,
              dependencies=[Depends(BEARER)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        target = await state.target(body.model, request)
        engine = checks.causal(target.engine, "/v1/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        checks.check_count(prompts, state.cfg, "prompt")
        if body.stream and len(prompts) > 1:
            raise ApiError(400, f"prompt: {len(prompts)} prompts in a streamed request; stream one prompt per request",
                           param="prompt", code="stream_many_prompts")
        params = checks.params("prompt", body.prompt)
        items = await state.check(lambda: [
            checks.completion(engine, p, param, body, state.cfg, adapter=target.peft_name)
            for p, param in zip(prompts, params, strict=True)])
        if body.stream:
            return await _stream(state, request, target, items[0], body, "completion", prompts[0])
        answers = await _answer(state, request, engine, items)
        _note(request, target, prompts, [a.text for a in answers], answers)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name,
                "model_version": target.version, "usage": _usage(answers),
                "choices": [{"index": i, "text": a.text, "finish_reason": a.finish_reason}
                            for i, a in enumerate(answers)]}

    @app.post("/v1/chat/completions", response_model=ChatResponse, responses=GENERATES,
              dependencies=[Depends(BEARER)])
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        target = await state.target(body.model, request)
        engine = checks.causal(target.engine, "/v1/chat/completions")
        messages = [m.model_dump() for m in body.messages]
        pictures = await checks.chat_pictures(engine, messages, state.cfg)
        item = await state.check(lambda: checks.completion(engine, checks.rendered(target, messages), "messages",
                                                           body, state.cfg, pictures, target.peft_name))
        asked = content_text(messages[-1]["content"])
        if body.stream:
            return await _stream(state, request, target, item, body, "chat", asked, pictures)
        [answer] = await _answer(state, request, engine, [item])
        _note(request, target, [asked], [answer.text], [answer], pictures)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name,
                "model_version": target.version, "usage": _usage([answer]),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": answer.finish_reason}]}


def _add_classify_route(app: FastAPI, state: ServerState) -> None:
    """POST /v1/classify: labels and scores, for classifiers only."""

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS, dependencies=[Depends(BEARER)])
    async def classify(body: ClassifyRequest, request: Request) -> dict:
        engine = await state.engine_for(body.model)
        if engine.kind != "classifier":
            raise ApiError(400, f"{engine.name} v{engine.version} generates text: use POST /v1/completions or "
                                "/v1/chat/completions", code="wrong_endpoint")
        texts = [body.input] if isinstance(body.input, str) else body.input
        checks.check_count(texts, state.cfg, "input")
        params = checks.params("input", body.input)
        await state.check(lambda: [checks.count_tokens(engine, t, param)
                                   for t, param in zip(texts, params, strict=True)])
        answers = await _answer(state, request, engine, texts)
        _note(request, Target(engine), texts, [a.label for a in answers], answers)
        tokens = sum(a.tokens_in for a in answers)
        return {"model": engine.name, "model_version": engine.version,
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
                "data": [{"index": i, "label": a.label, "scores": a.scores} for i, a in enumerate(answers)]}


def _add_status_routes(app: FastAPI, state: ServerState) -> None:
    """GET /health (open to all, for load balancers) and GET /metrics (Prometheus text)."""

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        e = state.engine
        return {"status": "ok", "model": e.name, "version": e.version, "kind": e.kind, "images": e.sees_images,
                "queued": state.queued, "prompting": e.prompting.format,
                "dtype": str(getattr(e.model, "dtype", "float32")).removeprefix("torch.")}

    @app.get("/metrics", dependencies=[Depends(BEARER)], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        m = state.metrics
        m.queue_depth.set(state.queued)
        m.cache_hit_rate.set(state.cache.hit_rate)
        m.cache_entries.set(len(state.cache))
        return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_playground(app: FastAPI, state: ServerState) -> None:
    """GET /v1/models (what a request's `model` may name) and GET /: the playground page, a static file that calls
    this API from the browser (docs/serving.md, "The playground"). The page is open like /health: it holds no data,
    and its API calls carry the token the user types in."""

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS, dependencies=[Depends(BEARER)])
    async def models() -> dict:
        listing = await asyncio.to_thread(state.picker.listing, state.engine)
        if state.adapters is not None:
            listing += state.adapters.listing()
        return {"object": "list", "data": [{"object": "model", "owned_by": "ftflow", **m} for m in listing]}

    page = files("ftcore.serving").joinpath("static/playground.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)


async def _answer(state: ServerState, request: Request, engine: Engine, items: list) -> list:
    """Each item's answer: from the cache when the request is deterministic and was answered before, else from the
    model (items of one request may join different batches)."""
    looked_up = [_cached(state, engine, i) for i in items]
    answers = [answer for _, answer in looked_up]
    missing = [i for i, a in enumerate(answers) if a is None]
    try:
        computed = await asyncio.gather(*(state.submit(engine, items[i]) for i in missing))
    except Overloaded as e:
        raise _overloaded(e) from None
    for i, answer in zip(missing, computed, strict=True):
        answers[i] = answer
        if (key := looked_up[i][0]) is not None:
            state.cache.put(key, answer)
    request.state.cached = not missing
    return answers


def _cached(state: ServerState, engine: Engine, item) -> tuple[str | None, Any]:
    """The item's response-cache key (None when its answer may differ each time it is asked) and its cached answer
    (None when there is none)."""
    if not (state.cache.enabled and _deterministic(item)):
        return None, None
    key = cache_key(f"{engine.version}:{engine.variant}", engine.kind,
                    item.cache_fields() if isinstance(item, Completion) else item)
    answer = state.cache.get(key)
    (state.metrics.cache_misses if answer is None else state.metrics.cache_hits).inc()
    return key, answer


def _overloaded(e: Overloaded) -> ApiError:
    return ApiError(429, str(e), "overloaded_error", code="queue_full")


async def _stream(state: ServerState, request: Request, target: Target, item: Completion,
                  body: CompletionRequest | ChatRequest, kind: Literal["completion", "chat"], asked: str,
                  pictures: list[Picture] | None = None) -> EventStream:
    """A streamed answer (ftcore/serving/streaming.py). The response starts with the first token (or the whole
    answer, from the cache or a model that does not decode continuously), so a request refused before it (a full
    queue, a failed prefill) still gets its status and JSON error; a failure after it ends the stream with an error
    event."""
    engine = target.engine
    key, cached = _cached(state, engine, item)
    tokens: asyncio.Queue[int | None] = asyncio.Queue()  # holds at most the answer's max_tokens
    if cached is None:
        answer: asyncio.Future = asyncio.ensure_future(state.submit(engine, item, tokens.put_nowait))
    else:
        answer = asyncio.get_running_loop().create_future()
        answer.set_result(cached)
    answer.add_done_callback(lambda _: tokens.put_nowait(None))
    try:
        first = await tokens.get()
    except BaseException:  # the client left: its row leaves the decode batch
        answer.cancel()
        raise
    if first is None and isinstance(answer.exception(), Overloaded):
        raise _overloaded(answer.exception())
    if first is None and answer.exception() is not None:
        raise answer.exception()
    endpoint = ENDPOINTS[request.url.path]
    state.metrics.first_token.labels(endpoint=endpoint).observe(time.perf_counter() - request.state.started)
    request.state.cached = cached is not None
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    chunks = Chunks(kind, f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex}", int(time.time()),
                    target.name, target.version, include_usage)
    text = TextStream(engine.tokenizer, item.stop)

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks.opening():
            yield chunk
        token = first
        while token is not None:
            if piece := text.push(token):
                yield chunks.piece(piece)
            token = await tokens.get()
        try:
            done = answer.result()
        except Exception as e:  # the model failed after the first token: the status is sent, the stream says it
            log.error("a streamed answer failed", exc_info=e)
            request.state.error = f"{type(e).__name__}: {e}"
            state.metrics.streams_closed.labels(reason="error").inc()
            yield event(error_body(f"internal error ({type(e).__name__}); the server logged it", "server_error"))
            return
        if key is not None and cached is None:
            state.cache.put(key, done)
        if rest := text.rest(done.text):
            yield chunks.piece(rest)
        _note(request, target, [asked], [done.text], [done], pictures)
        for chunk in chunks.finish(done.finish_reason, _usage([done])):
            yield chunk

    def ended(how: str) -> None:
        answer.cancel()  # a row still decoding leaves its batch
        if how != "done":
            reason = "stalled" if how == "stalled" else "client_closed"
            state.metrics.streams_closed.labels(reason=reason).inc()
            request.state.closed = True
            request.state.error = (f"the client took no chunk for {state.cfg.limits.stream_stall_s:g} s "
                                   "(limits.stream_stall_s): stream closed") if how == "stalled" else \
                "the client closed the stream before the answer's end"
            log.warning("stream to %s ended early: %s", request.client.host if request.client else "?",
                        request.state.error)

    return EventStream(events(), state.cfg.limits.stream_stall_s, ended)


def _deterministic(item) -> bool:
    return not isinstance(item, Completion) or item.greedy


def _usage(answers) -> dict[str, int]:
    tokens_in, tokens_out = sum(a.tokens_in for a in answers), sum(a.tokens_out for a in answers)
    return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}


def _note(request: Request, target: Target, inputs: list[str], outputs: list[str], answers: list,
          pictures: list[Picture] | None = None) -> None:
    """What the request log keeps of a successful request. Several inputs in one request are kept as a JSON list;
    a chat's images as their sizes and brightness (for the monitor's drift), never their pixels."""
    request.state.logged = {
        "model": target.name, "version": target.version,
        "tokens_in": sum(a.tokens_in for a in answers), "tokens_out": sum(getattr(a, "tokens_out", 0) for a in answers),
        "input": inputs[0] if len(inputs) == 1 else json.dumps(inputs, ensure_ascii=False),
        "output": outputs[0] if len(outputs) == 1 else json.dumps(outputs, ensure_ascii=False),
        "images": json.dumps([p.stats for p in pictures]) if pictures else None}


ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat.completions", "/v1/classify": "classify"}


def _recorder(state: ServerState) -> Callable[[dict, int, float], None]:
    """What RecordRequests calls when a request is over: an API request is counted in the metrics and appended to
    the request log, failed and abandoned ones included."""

    def record(scope: dict, status: int, latency_s: float) -> None:
        endpoint = ENDPOINTS.get(scope["path"])
        if endpoint is None:
            return
        noted = scope.get("state", {})
        if (adapter := noted.get("adapter")) is not None:
            state.adapters.release(adapter)  # type: ignore[union-attr]
        if noted.get("closed"):  # a stream that ended early: the client's doing, like leaving before the answer
            status = CLIENT_CLOSED
        logged = noted.get("logged", {"model": state.engine.name, "version": state.engine.version})
        state.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        state.metrics.latency.labels(endpoint=endpoint).observe(latency_s)
        state.metrics.tokens_in.inc(logged.get("tokens_in", 0))
        state.metrics.tokens_out.inc(logged.get("tokens_out", 0))
        error = noted.get("error") or ("the client closed the connection before the answer"
                                       if status == CLIENT_CLOSED else None)
        state.log.record(RequestRecord(ts=time.time() - latency_s, endpoint=endpoint, status=status,
                                       latency_s=latency_s, cached=noted.get("cached", False), error=error,
                                       **logged))

    return record


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        request.state.error = e.message
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param, code = validation_message(e.errors())
        request.state.error = message
        return error_response(400, message, "invalid_request_error", param, code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        request.state.error = str(e.detail)
        kind = {404: "not_found_error", 405: "method_not_allowed"}.get(e.status_code, "invalid_request_error")
        # FastAPI's one 400: a body its JSON parser gave up on (nested too deep, a number with too many digits).
        code = "invalid_json" if e.status_code == 400 else None
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}", kind, code=code)
