"""The decode processes, replaced when one dies.

A worker process can die under an image (a crash in a native decoder, the kernel's OOM killer,
an operator's `kill -9`). `ProcessPoolExecutor` then fails every future it holds with
`BrokenProcessPool` and refuses new work for good; left alone, every later event would be
dead-lettered or stop the service.

`DecodePool.run` hides that: the broken pool is replaced by a fresh one (once, however many
events saw it break), and each event that was in the broken pool is retried alone, in a
one-process quarantine pool that runs one retry at a time. An image that kills its quarantine
process too is the cause: it fails with `DecodeCrashed` (dead letter `decode_crashed`). The
innocent events that shared the broken pool with it get their answer from their own retry,
which no other image can disturb.

An event cancelled while its decode runs (a revoked partition, the drain deadline) leaves the
decode to finish unused: cancelling a queued executor future breaks `ProcessPoolExecutor`'s
bookkeeping when a worker later dies (CPython 3.11), which strands every decode queued
behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

from moderator.decode import PreprocessSpec
from moderator.errors import DecodeCrashed
from moderator.log import get
from moderator.prepare import start_pool

__all__ = ["DecodePool"]

log = get("decode_pool")
T = TypeVar("T")


class DecodePool:
    """`workers` decode processes plus a lazily started quarantine process."""

    def __init__(
        self,
        workers: int,
        spec: PreprocessSpec,
        *,
        on_replaced: Callable[[str], None] | None = None,
    ) -> None:
        self._workers = workers
        self._spec = spec
        self._on_replaced = on_replaced or (lambda which: None)
        self._pool: ProcessPoolExecutor | None = None
        self._quarantine: ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()  # replacing pools
        self._alone = asyncio.Lock()  # one quarantine retry at a time

    @property
    def workers(self) -> int:
        return self._workers

    async def start(self) -> None:
        """Start and warm every process (see `prepare.start_pool`); off the event loop."""
        self._pool = await asyncio.to_thread(start_pool, self._workers, self._spec)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a decode process. Raises what `fn` raises, or `DecodeCrashed`."""
        loop = asyncio.get_running_loop()
        call = partial(fn, *args)
        while True:
            pool = self._pool
            if pool is None:
                raise RuntimeError("DecodePool.run before start")
            try:
                future = loop.run_in_executor(pool, call)
            except BrokenProcessPool:  # broken before this event got in: not its fault
                await self._replace(pool)
                continue
            break
        try:
            return await asyncio.shield(future)
        except BrokenProcessPool:
            await self._replace(pool)
        return await self._retry_alone(call)

    async def _retry_alone(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        async with self._alone:
            if self._quarantine is None:
                self._quarantine = await asyncio.to_thread(start_pool, 1, self._spec)
            quarantine = self._quarantine
            future = loop.run_in_executor(quarantine, call)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # Hold the quarantine until this retry ends: were it the poison, the next
                # retry must not share the process it kills.
                await asyncio.wait([future])
                raise
            except BrokenProcessPool as exc:
                self._quarantine = None
                self._on_replaced("quarantine")
                await asyncio.to_thread(_shut, quarantine)
                raise DecodeCrashed(
                    "the decode process died while decoding this image, and again on its retry"
                ) from exc

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
            await asyncio.to_thread(_shut, broken)
            self._pool = await asyncio.to_thread(start_pool, self._workers, self._spec)

    def pids(self) -> list[int]:
        """The main pool's worker process ids (for tests and diagnostics)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(processes)

    async def close(self) -> None:
        for pool in (self._pool, self._quarantine):
            if pool is not None:
                await asyncio.to_thread(_shut, pool)
        self._pool = self._quarantine = None


def _shut(pool: ProcessPoolExecutor) -> None:
    # Wait for the workers to exit: a pool abandoned with wait=False can leave its forkserver
    # and a worker blocked on each other's pipes after this process ends. Decodes are bounded
    # by the pixel limit, so this returns promptly.
    pool.shutdown(wait=True, cancel_futures=True)
