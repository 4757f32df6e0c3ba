"""Dynamic batching: many single images in, few large inference calls out.

A worker blocks on the queue for the first image, then gathers more until the batch is full
or `max_wait_s` has passed since that first image, whichever is first. It never spins: under
no load it sleeps in `Queue.get`, under full load batches leave at `max_batch` without
waiting. One worker per inference runtime (one per GPU); inference runs in that worker's
own thread so the event loop keeps serving heartbeats, fetches and commits.

An item is either decoded pixels or, where a worker has a GPU decoder (`DeviceInfer`), the
encoded JPEG bytes (`embed_encoded`): that worker decodes them on its GPU as part of the
batch. An image the GPU cannot take fails with `NotDecoded`, and the caller decodes it on
the CPU and sends the pixels instead. Such a worker runs two stages in two threads: while
batch k is resized and embedded, batch k+1 is gathered and decoded (the JPEG engines and
the SMs work side by side); at most those two batches are in hand at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from moderator.cpu import thread_cpu
from moderator.errors import InferenceFailed
from moderator.log import get
from moderator.types import Embeddings, Pixels

log = get("batch")

A = TypeVar("A")
T = TypeVar("T")
Infer = Callable[[Pixels], Embeddings]
Item = Pixels | bytes
Outcome = tuple[Embeddings, dict[int, str]]
"""One embedding row per item, and {item index: why} for the bytes not decoded (their rows
are meaningless)."""


@dataclass(frozen=True, slots=True)
class DeviceInfer:
    """A GPU's two stages for batches of pixels and JPEG bytes: `decode` (the JPEGs), then
    `finish` (resize, the model) on what `decode` returned. Each runs in its own thread."""

    decode: Callable[[list[Item]], Any]
    finish: Callable[[Any], Outcome]


class NotDecoded(Exception):
    """The GPU did not decode these bytes; decode them on the CPU and embed the pixels."""


@dataclass(frozen=True, slots=True)
class Embedded:
    """One image's embedding and what its batch cost, for the verdict's timings."""

    embedding: np.ndarray
    queued_s: float
    inference_s: float
    batch_size: int


@dataclass(slots=True)
class _Item:
    pixels: Item
    future: asyncio.Future[Embedded]
    enqueued: float


class Batcher:
    """Feeds `infer` callables (one per device) with batches from one shared queue."""

    def __init__(
        self,
        infers: Sequence[Infer],
        *,
        device_infers: Sequence[DeviceInfer | None] | None = None,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float, float], None] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        on_cpu: Callable[[str, float, str], None] | None = None,
    ) -> None:
        if not infers:
            raise ValueError("at least one inference callable is needed")
        self._infers = list(infers)
        self._device_infers = list(device_infers or [None] * len(self._infers))
        if len(self._device_infers) != len(self._infers):
            raise ValueError("one device_infers entry (or None) per inference callable")
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch or (lambda size, queued, seconds: None)
        # A GPU worker's batches, stage by stage: "gpu_decode" (the decode stage's call),
        # "gpu_wait" (for the previous batch's second stage), "gpu_finish" (resize, model).
        # Called from the stage threads too: it must be thread-safe (Prometheus metrics are).
        self._on_stage = on_stage or (lambda stage, seconds: None)
        # CPU seconds by `moderator.cpu` stage (`batch` on the loop, `infer` and `gpu_decode`
        # in their threads) and where; thread-safe, as `on_stage`.
        self._on_cpu = on_cpu or (lambda stage, seconds, where: None)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._pools: list[ThreadPoolExecutor] = []

    def start(self) -> None:
        for index, (infer, device) in enumerate(
            zip(self._infers, self._device_infers, strict=True)
        ):
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{index}")
            self._pools.append(pool)
            task = asyncio.create_task(self._work(infer, device, pool), name=f"batch-{index}")
            self._tasks.append(task)

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
        return await self._submit(pixels)

    async def embed_encoded(self, data: bytes) -> Embedded:
        """Embed one JPEG, decoded on the GPU with its batch; `NotDecoded` if it was not."""
        return await self._submit(bytes(data))

    async def _submit(self, item: Item) -> Embedded:
        future: asyncio.Future[Embedded] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(item, future, time.monotonic()))
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

    async def _host_only(
        self, infer: Infer, items: list[Item], pool: ThreadPoolExecutor
    ) -> Outcome:
        """The pixels through `infer`; bytes (sent to a worker without a GPU decoder) fail."""
        started = thread_cpu()
        failed = {i: "no GPU decoder here" for i, p in enumerate(items) if isinstance(p, bytes)}
        hosts = [p for p in items if not isinstance(p, bytes)]
        if not hosts:
            return np.zeros((len(items), 0), np.float32), failed
        stacked = np.stack(hosts)
        self._on_cpu("batch", thread_cpu() - started, "loop")
        rows = await asyncio.get_running_loop().run_in_executor(
            pool, self._counted, "infer", infer, stacked
        )
        if not failed:
            return rows, failed
        out = np.zeros((len(items), rows.shape[1]), np.float32)
        out[[i for i in range(len(items)) if i not in failed]] = rows
        return out, failed

    async def _work(
        self, infer: Infer, device: DeviceInfer | None, pool: ThreadPoolExecutor
    ) -> None:
        loop = asyncio.get_running_loop()
        decoding = None  # the decode stage's thread, for a worker with a GPU decoder
        if device is not None:
            decoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-decode")
            self._pools.append(decoding)
        finishing: asyncio.Task[None] | None = None  # the previous batch's second stage
        try:
            while True:
                batch = await self._gather()
                if not batch:
                    continue
                started = time.monotonic()
                items = [item.pixels for item in batch]
                if (
                    device is None
                    or decoding is None
                    or not any(isinstance(p, bytes) for p in items)
                ):
                    if finishing is not None:
                        await finishing
                        finishing = None
                    await self._complete(batch, started, self._host_only(infer, items, pool))
                    continue
                try:  # overlaps the previous batch's second stage
                    decoded = await loop.run_in_executor(
                        decoding, self._clocked, "gpu_decode", "gpu_decode", device.decode, items
                    )
                except Exception as exc:
                    self._fail(batch, exc)
                    continue
                if finishing is not None:
                    waited = time.monotonic()
                    await finishing
                    self._on_stage("gpu_wait", time.monotonic() - waited)
                outcome = loop.run_in_executor(
                    pool, self._clocked, "gpu_finish", "infer", device.finish, decoded
                )
                finishing = asyncio.create_task(self._complete(batch, started, outcome))
        finally:
            if finishing is not None:
                finishing.cancel()

    def _clocked(self, stage: str, cpu_stage: str, call: Callable[[A], T], arg: A) -> T:
        """`call(arg)` in a stage's thread; its own duration goes to `on_stage`, its thread's
        CPU to `on_cpu`, failed or not."""
        started = time.monotonic()
        try:
            return self._counted(cpu_stage, call, arg)
        finally:
            self._on_stage(stage, time.monotonic() - started)

    def _counted(self, cpu_stage: str, call: Callable[[A], T], arg: A) -> T:
        started = thread_cpu()
        try:
            return call(arg)
        finally:
            self._on_cpu(cpu_stage, thread_cpu() - started, "thread")

    def _fail(self, batch: list[_Item], exc: Exception) -> None:
        """Inference failures are the service's, not the event's: every waiter gets them, as
        `InferenceFailed`."""
        log.error("inference failed", exc_info=exc, extra={"fields": {"batch": len(batch)}})
        for item in batch:
            if not item.future.done():
                failure = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                item.future.set_exception(failure)

    async def _complete(
        self, batch: list[_Item], started: float, outcome: Awaitable[Outcome]
    ) -> None:
        """Wait for a batch's embeddings and hand each waiter its row (or `NotDecoded`)."""
        queued = max(started - item.enqueued for item in batch)
        try:
            embeddings, failed = await outcome
        except Exception as exc:
            self._fail(batch, exc)
            return
        seconds = time.monotonic() - started
        self._on_batch(len(batch), queued, seconds)
        for index, (item, row) in enumerate(zip(batch, embeddings, strict=True)):
            if item.future.done():
                continue
            if index in failed:
                item.future.set_exception(NotDecoded(failed[index]))
            else:
                item.future.set_result(Embedded(row, started - item.enqueued, seconds, len(batch)))
