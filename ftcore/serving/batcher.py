"""Dynamic batching: requests queue up while the model is busy, and the next batch takes up to `max_batch_size` of
them, waiting at most `max_wait_ms` after the first for more to arrive. The model runs one batch at a time on one
worker thread, so the event loop stays free to accept requests meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ftcore.serving.config import BatchingConfig


class Overloaded(Exception):
    """The queue is full: the client should retry later (429)."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future


class Batcher:
    """`process(items) -> results` (same order) runs each batch; it is called on the worker thread only."""

    def __init__(self, process: Callable[[list[Any]], list[Any]], cfg: BatchingConfig, max_queue: int = 4096,
                 on_batch: Callable[[int], None] | None = None):
        self.process, self.max_queue, self.on_batch = process, max_queue, on_batch
        self.max_batch_size = cfg.max_batch_size if cfg.enabled else 1
        self.max_wait_s = cfg.max_wait_ms / 1000 if cfg.enabled else 0.0
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftflow-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="ftflow-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._worker.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: Any) -> Any:
        """The item's result, once the batch it joined has run; the batch's exception if it failed."""
        assert self._queue is not None, "Batcher.start() first"
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests are waiting; retry later")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(item, future))
        return await future

    async def _loop(self) -> None:
        while True:
            # A job whose client went away (its future cancelled) is not worth the model's time.
            batch = [job for job in await self._collect() if not job.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Job]) -> None:
        """Answers the batch's jobs. When it fails, each job of a larger batch is tried alone: a request the model
        cannot answer then fails by itself, and the requests that happened to share its batch are answered."""
        if self.on_batch is not None:
            self.on_batch(len(batch))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._worker, self.process, [job.item for job in batch])
        except Exception as e:  # the server goes on
            if len(batch) > 1:
                for job in batch:
                    await self._run([job])
            elif not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():  # the client may have gone away
                job.future.set_result(result)

    async def _collect(self) -> list[_Job]:
        """The first waiting job, then more until the batch is full or the wait is over; whatever is already
        queued joins even after the wait (it queued while the last batch ran)."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch
