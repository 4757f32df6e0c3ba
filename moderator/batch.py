"""Dynamic batching: many single images in, few large inference calls out.

A worker blocks on the queue for the first image, then gathers more until the batch is full
or `max_wait_s` has passed since that first image, whichever is first. It never spins: under
no load it sleeps in `Queue.get`, under full load batches leave at `max_batch` without
waiting. One worker per inference runtime (one per GPU); inference runs in that worker's
own thread so the event loop keeps serving heartbeats, fetches and commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from moderator.log import get
from moderator.types import Embeddings, Pixels

log = get("batch")

Infer = Callable[[Pixels], Embeddings]


@dataclass(frozen=True, slots=True)
class Embedded:
    """One image's embedding and what its batch cost, for the verdict's timings."""

    embedding: np.ndarray
    queued_s: float
    inference_s: float
    batch_size: int


@dataclass(slots=True)
class _Item:
    pixels: Pixels
    future: asyncio.Future[Embedded]
    enqueued: float


class Batcher:
    """Feeds `infer` callables (one per device) with batches from one shared queue."""

    def __init__(
        self,
        infers: Sequence[Infer],
        *,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        if not infers:
            raise ValueError("at least one inference callable is needed")
        self._infers = list(infers)
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch or (lambda size, queued, seconds: None)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._pools: list[ThreadPoolExecutor] = []

    def start(self) -> None:
        for index, infer in enumerate(self._infers):
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{index}")
            self._pools.append(pool)
            self._tasks.append(asyncio.create_task(self._work(infer, pool), name=f"batch-{index}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self._pools:
            pool.shutdown(wait=True)
        self._tasks.clear()
        self._pools.clear()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def embed(self, pixels: Pixels) -> Embedded:
        """Embed one (S, S, 3) image; resolves when its batch has run."""
        future: asyncio.Future[Embedded] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(pixels, future, time.monotonic()))
        return await future

    async def _gather(self) -> list[_Item]:
        first = await self._queue.get()
        batch = [first]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in batch if not item.future.cancelled()]

    async def _work(self, infer: Infer, pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            started = time.monotonic()
            queued = max(started - item.enqueued for item in batch)
            try:
                pixels = np.stack([item.pixels for item in batch])
                embeddings = await loop.run_in_executor(pool, infer, pixels)
            except Exception as exc:  # inference failures are the service's, not the event's
                log.exception("inference failed", extra={"fields": {"batch": len(batch)}})
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            seconds = time.monotonic() - started
            self._on_batch(len(batch), queued, seconds)
            for item, row in zip(batch, embeddings, strict=True):
                if not item.future.done():
                    item.future.set_result(
                        Embedded(row, started - item.enqueued, seconds, len(batch))
                    )
