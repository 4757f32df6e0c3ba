"""The decode processes, replaced when one dies.

A worker process can die under an image (a crash in a native decoder, the kernel's OOM killer,
an operator's `kill -9`). `ProcessPoolExecutor` then fails every future it holds with
`BrokenProcessPool` and refuses new work for good; left alone, every later event would be
dead-lettered or stop the service. Worse, a worker killed while it was sending a result leaves
half a message in the pool's result pipe: the pool's manager thread waits for the rest forever,
the pool never even breaks, and every decode waits with it (CPython 3.11-3.13).

`DecodePool` hides both:

* Each decode is awaited on a future of its own, which a watchdog fails when it sees a worker
  process dead, whether or not the executor noticed (`_watch`).
* The broken pool is replaced by a fresh one (once, however many events saw it break), and
  shut down by force: its processes killed, its result pipe closed so a wedged manager thread
  reads the end of the pipe and exits.
* Each event that was in the broken pool is retried alone, in a one-process quarantine pool
  that runs one retry at a time. An image that kills its quarantine process too is the cause:
  it fails with `DecodeCrashed` (dead letter `decode_crashed`). The innocent events that shared
  the broken pool with it get their answer from their own retry.

An event cancelled while its decode runs (a revoked partition, the drain deadline) leaves the
decode to finish unused: cancelling a queued executor future breaks `ProcessPoolExecutor`'s
bookkeeping when a worker later dies (CPython 3.11), which strands every decode queued
behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

from moderator.cpu import thread_cpu
from moderator.errors import DecodeCrashed
from moderator.log import get
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.prepare import start_pool

__all__ = ["DecodePool"]

log = get("decode_pool")
T = TypeVar("T")
_WATCH_S = 0.25  # how often the watchdog looks for dead worker processes
_CLOSE_GRACE_S = 10.0  # a healthy pool's processes get this long to exit at close


class DecodePool:
    """`workers` decode processes plus a lazily started quarantine process."""

    def __init__(
        self,
        workers: int,
        spec: PreprocessSpec,
        *,
        on_replaced: Callable[[str], None] | None = None,
        on_cpu: Callable[[str, float], None] | None = None,
    ) -> None:
        self._workers = workers
        # The event loop's side of each trip (`handoff`): submitting, and taking the answer.
        self._on_cpu = on_cpu or (lambda stage, seconds: None)
        self._spec = spec
        self._on_replaced = on_replaced or (lambda which: None)
        self._pool: ProcessPoolExecutor | None = None
        self._quarantine: ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()  # replacing pools
        self._alone = asyncio.Lock()  # one quarantine retry at a time
        self._waiting: dict[ProcessPoolExecutor, set[asyncio.Future[Any]]] = {}
        self._condemned: set[ProcessPoolExecutor] = set()  # failed by the watchdog
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def workers(self) -> int:
        return self._workers

    async def start(self) -> None:
        """Start and warm every process (see `prepare.start_pool`); off the event loop."""
        self._pool = await asyncio.to_thread(start_pool, self._workers, self._spec)
        self._watchdog = asyncio.create_task(self._watch(), name="decode-pool-watchdog")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a decode process. Raises what `fn` raises, or `DecodeCrashed`."""
        call = partial(fn, *args)
        while True:
            pool = self._pool
            if pool is None:
                raise RuntimeError("DecodePool.run before start or after close")
            if pool in self._condemned:  # being replaced: this event was never in it
                await self._replace(pool)
                continue
            try:
                waiter = self._submit(pool, call)
            except (BrokenProcessPool, RuntimeError):  # broken or shut before this event got in
                await self._replace(pool)
                continue
            break
        try:
            return await asyncio.shield(waiter)
        except BrokenProcessPool:
            await self._replace(pool)
        return await self._retry_alone(call)

    def _submit(self, pool: ProcessPoolExecutor, call: Callable[[], T]) -> asyncio.Future[T]:
        """`call` in `pool`, awaited on a future this class can fail itself (`_fail_all`)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        waiting = self._waiting.setdefault(pool, set())
        waiting.add(waiter)
        waiter.add_done_callback(waiting.discard)

        def settle(done: Future[T]) -> None:
            if waiter.done():
                return
            started = thread_cpu()
            try:
                answer(done)
            finally:
                self._on_cpu("handoff", thread_cpu() - started)

        def answer(done: Future[T]) -> None:
            if done.cancelled():
                waiter.set_exception(BrokenProcessPool("the decode was cancelled by its pool"))
            elif (exc := done.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(done.result())

        def relay(done: Future[T]) -> None:  # in the pool's manager thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, done)

        started = thread_cpu()
        try:
            pool.submit(call).add_done_callback(relay)
        except BaseException:
            waiting.discard(waiter)
            raise
        finally:
            self._on_cpu("handoff", thread_cpu() - started)
        return waiter

    def _fail_all(self, pool: ProcessPoolExecutor) -> None:
        self._condemned.add(pool)
        for waiter in list(self._waiting.pop(pool, ())):
            if not waiter.done():
                waiter.set_exception(BrokenProcessPool("a decode process died"))

    async def _watch(self) -> None:
        """Fail the decodes of a pool one of whose processes died: the executor may never."""
        while True:
            await asyncio.sleep(_WATCH_S)
            for pool in (self._pool, self._quarantine):
                if pool is not None and _has_dead_process(pool):
                    self._fail_all(pool)

    async def _retry_alone(self, call: Callable[[], T]) -> T:
        async with self._alone:
            quarantine = await self._quarantine_pool()
            try:
                waiter = self._submit(quarantine, call)
            except (BrokenProcessPool, RuntimeError):  # its process died since the check
                await self._drop_quarantine(quarantine)
                quarantine = await self._quarantine_pool()
                waiter = self._submit(quarantine, call)
            try:
                return await asyncio.shield(waiter)
            except asyncio.CancelledError:
                # Hold the quarantine until this retry ends: were it the poison, the next
                # retry must not share the process it kills.
                await asyncio.wait([waiter])
                raise
            except BrokenProcessPool as exc:
                await self._drop_quarantine(quarantine)
                raise DecodeCrashed(
                    "the decode process died while decoding this image, and again on its retry"
                ) from exc

    async def _quarantine_pool(self) -> ProcessPoolExecutor:
        """The one-process pool for retries, started on first use, and started afresh when
        its process died while idle (killed from outside): that says nothing of the image
        about to be retried."""
        pool = self._quarantine
        if pool is not None and (pool in self._condemned or _has_dead_process(pool)):
            await self._drop_quarantine(pool)
            pool = None
        if pool is None:
            pool = self._quarantine = await asyncio.to_thread(start_pool, 1, self._spec)
        return pool

    async def _drop_quarantine(self, pool: ProcessPoolExecutor) -> None:
        self._quarantine = None
        self._on_replaced("quarantine")
        await asyncio.to_thread(_shut, pool, 0.0)
        self._condemned.discard(pool)

    async def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Replace the main pool if it is still `broken` (many events see one break)."""
        async with self._lock:
            if self._pool is not broken:
                return
            log.error(
                "a decode process died; replacing the decode processes",
                extra={"fields": {"processes": self._workers}},
            )
            self._on_replaced("main")
            self._fail_all(broken)
            await asyncio.to_thread(_shut, broken, 0.0)
            self._pool = await asyncio.to_thread(start_pool, self._workers, self._spec)
            self._condemned.discard(broken)

    def pids(self) -> list[int]:
        """The main pool's worker process ids (for tests and diagnostics)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(processes)

    def quarantine_pids(self) -> list[int]:
        """The retry pool's process id, once it started (for tests and diagnostics)."""
        processes = getattr(self._quarantine, "_processes", None) or {}
        return sorted(processes)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for pool in (self._pool, self._quarantine):
            if pool is not None:
                self._fail_all(pool)
                await asyncio.to_thread(_shut, pool, _CLOSE_GRACE_S)
        self._pool = self._quarantine = None


def _has_dead_process(pool: ProcessPoolExecutor) -> bool:
    processes = getattr(pool, "_processes", None) or {}
    return any(process.exitcode is not None for process in list(processes.values()))


def _shut(pool: ProcessPoolExecutor, grace_s: float) -> None:
    """Shut `pool` down whatever state it is in; its processes get `grace_s` to exit.

    Waits for every process: a pool abandoned with live processes can leave its forkserver and
    a worker blocked on each other's pipes after this process ends. Processes still alive after
    the grace are killed, and the parent's end of the result pipe is closed, so a manager thread
    stuck on half a message from a killed worker reads the end of the pipe and exits.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    results = getattr(pool, "_result_queue", None)
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.exitcode is None:
            process.kill()
            process.join(5.0)
    writer = getattr(results, "_writer", None)
    if writer is not None:
        with contextlib.suppress(OSError):
            writer.close()
    if manager is not None:
        manager.join(10.0)
