"""The model thread of continuous batching: requests for causal text models join a running decode batch
(ftcore/serving/decoding.py) at the next step and leave it when they finish, and each request's future is resolved
the moment its own answer is done. One decode batch per engine (a reload or a request's `model` may put two versions
in memory); the thread steps them in turn.

The event loop never waits on the model: `submit` puts the request in a thread-safe queue and awaits a future that the
model thread resolves through `call_soon_threadsafe`. A request whose client went away (its future cancelled) leaves
its batch at the next step. `on_token` receives each token as it is chosen (for streaming).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ftcore.serving.batcher import Overloaded
from ftcore.serving.decoding import DecodeBatch, Row
from ftcore.serving.engine import Completed, Completion, Engine

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    engine: Engine
    request: Completion
    future: asyncio.Future
    on_token: Callable[[int], None] | None = None
    tokens_in: int = 0
    row: Row | None = field(default=None, repr=False)


class DecodeLoop:
    """Continuous batching of `Completion`s on one model thread; at most `max_rows` rows decode at once."""

    def __init__(self, max_rows: int, max_queue: int = 4096, on_join: Callable[[int], None] | None = None,
                 on_step: Callable[[int], None] | None = None):
        self.max_rows, self.max_queue = max_rows, max_queue
        self.on_join, self.on_step = on_join, on_step  # metrics: requests prefilled together; rows per step
        self._waiting: queue.Queue[_Job] = queue.Queue()
        self._chores: queue.Queue[tuple[Callable[[], Any], asyncio.Future]] = queue.Queue()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: dict[int, tuple[Engine, DecodeBatch]] = {}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="ftflow-decode", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    @property
    def queued(self) -> int:
        return self._waiting.qsize()

    async def submit(self, engine: Engine, request: Completion,
                     on_token: Callable[[int], None] | None = None) -> Completed:
        """The request's answer, once its row finishes; `on_token(token)` runs on the event loop for every token."""
        if self._waiting.qsize() >= self.max_queue:
            raise Overloaded(f"{self._waiting.qsize()} requests are waiting; retry later")
        job = _Job(engine, request, asyncio.get_running_loop().create_future(), on_token)
        self._waiting.put(job)
        self._wake.set()
        return await job.future

    async def between_steps(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the model thread between two decode steps, when nothing runs the model (attaching an adapter, say);
        its result or its exception."""
        future = asyncio.get_running_loop().create_future()
        self._chores.put((fn, future))
        self._wake.set()
        return await future

    def adapters_in_use(self) -> set[str]:
        """The adapters of the rows decoding and of the requests waiting to join. Model thread only."""
        with self._waiting.mutex:
            waiting = {job.request.adapter for job in self._waiting.queue}
        return waiting | {row.adapter for _, batch in self._batches.values() for row in batch.rows}

    # ---- the model thread

    def _run(self) -> None:
        while not self._stopping:
            self._do_chores()
            self._admit()
            if not any(len(batch) for _, batch in self._batches.values()):
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            for key, (engine, batch) in list(self._batches.items()):
                self._step(engine, batch)
                if not batch:
                    self._batches.pop(key, None)  # a failed step has removed it already

    def _do_chores(self) -> None:
        while True:
            try:
                fn, future = self._chores.get_nowait()
            except queue.Empty:
                return
            try:
                result, error = fn(), None
            except Exception as e:  # the caller gets it
                result, error = None, e
            self._resolve(future, result, error)

    def _resolve(self, future: asyncio.Future, result: Any, error: Exception | None) -> None:
        def resolve() -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(result)

        self._loop.call_soon_threadsafe(resolve)

    def _admit(self) -> None:
        """Waiting requests join the batch of their engine, while there is room; each joining group is prefilled
        together."""
        joining: dict[int, list[_Job]] = {}
        rows = sum(len(batch) for _, batch in self._batches.values())
        while rows < self.max_rows:
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                break
            if job.future.cancelled():
                continue
            joining.setdefault(id(job.engine), []).append(job)
            rows += 1
        for key, jobs in joining.items():
            engine = jobs[0].engine
            _, batch = self._batches.setdefault(key, (engine, DecodeBatch(engine.model, engine.tokenizer.pad_token_id
                                                                          or 0)))
            for job in jobs:
                prompt = engine.tokenizer(job.request.prompt, add_special_tokens=False)["input_ids"]
                job.tokens_in = len(prompt)
                job.row = self._row(engine, job, prompt)
            self._join(engine, batch, jobs)

    @staticmethod
    def _row(engine: Engine, job: _Job, prompt: list[int]) -> Row:
        r = job.request
        return Row(key=job, prompt=prompt, max_new_tokens=r.max_new_tokens,
                   temperature=0.0 if r.greedy else r.temperature, top_p=r.top_p, seed=r.seed, adapter=r.adapter,
                   stop_ids=frozenset() if r.ignore_eos else frozenset(engine.stop_ids), min_tokens=r.min_tokens)

    def _join(self, engine: Engine, batch: DecodeBatch, jobs: list[_Job]) -> None:
        """Prefill `jobs` together; when that fails, each alone: a request the model cannot answer then fails by
        itself, and the requests that happened to join with it are answered."""
        if self.on_join is not None:
            self.on_join(len(jobs))
        self._follow(engine, batch)
        try:
            chosen = batch.join([j.row for j in jobs])  # a failed prefill leaves the batch as it was
        except Exception as e:  # the server goes on
            if len(jobs) > 1:
                for job in jobs:
                    self._join(engine, batch, [job])
            else:
                self._fail(jobs, e)
            return
        self._deliver(engine, chosen)

    def _step(self, engine: Engine, batch: DecodeBatch) -> None:
        """One token for every row of the batch; a failed step fails them all (their cache is gone with it)."""
        for row in list(batch.rows):
            if row.key.future.cancelled():  # the client went away
                batch.cancel(row.key)
        if not batch:
            return
        if self.on_step is not None:
            self.on_step(len(batch))
        jobs = [row.key for row in batch.rows]
        self._follow(engine, batch)
        try:
            chosen = batch.step()
        except Exception as e:  # the server goes on
            self._batches.pop(id(engine), None)
            self._fail(jobs, e)
            return
        self._deliver(engine, chosen)

    @staticmethod
    def _follow(engine: Engine, batch: DecodeBatch) -> None:
        """The engine's model as it is now: the first adapter attached wraps it in PEFT (ftcore/serving/adapters.py)."""
        batch.model, batch.routes_adapters = engine.model, engine.routes_adapters

    def _fail(self, jobs: list[_Job], error: Exception) -> None:
        log.error("decoding failed for %d requests", len(jobs), exc_info=error)
        for job in jobs:
            self._settle(job, exception=error)

    def _deliver(self, engine: Engine, chosen: list) -> None:
        """Hand each chosen token to its request (streaming), and each finished answer to its future."""
        for row, token in chosen:
            job = row.key
            if job.on_token is not None and not row.stopped:
                self._loop.call_soon_threadsafe(job.on_token, token)
            text = self._stop_string_cut(engine, job) if job.request.stop else None
            if text is not None and not row.finished:
                self._batches[id(engine)][1].cancel(job)
            if row.finished or text is not None:
                self._settle(job, result=self._answer(engine, job, text))

    @staticmethod
    def _stop_string_cut(engine: Engine, job: _Job) -> str | None:
        """The answer before its first stop string, once one appears; else None."""
        text = engine.tokenizer.decode(job.row.tokens, skip_special_tokens=True)
        cut = [text.index(s) for s in job.request.stop if s and s in text]
        return text[:min(cut)] if cut else None

    @staticmethod
    def _answer(engine: Engine, job: _Job, cut: str | None) -> Completed:
        row = job.row
        stopped = row.stopped or cut is not None
        text = cut if cut is not None else engine.tokenizer.decode(row.tokens, skip_special_tokens=True)
        return Completed(text=text, tokens_in=job.tokens_in, tokens_out=len(row.tokens) + int(row.stopped),
                         finish_reason="stop" if stopped else "length")

    def _settle(self, job: _Job, result: Completed | None = None, exception: Exception | None = None) -> None:
        self._resolve(job.future, result, exception)
