"""One memory budget for the image bytes a replica holds at once.

Counting events alone does not bound memory: 1024 events in flight × 20 MiB images is 20 GiB.
The budget counts bytes instead, from one setting (`pipeline.memory_budget_bytes`):

* a consumed record's value is charged when it is accepted and released when its event is
  answered (`charge`/`release`): the bytes are already in memory, so the charge cannot wait,
  but while the budget is spent the consumer stays paused and nothing more is fetched;
* a URL download reserves the most it may bring (`max_image_bytes`) before it starts, and
  waits while that does not fit (`reserve`): concurrent downloads are bounded by the budget
  too, however many URL events are in flight. One download may always run, whatever the
  charges: the records waiting for it are charged too, so waiting for them to be released
  could wait forever.

Single event loop only; not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["Hold", "MemoryBudget"]


class MemoryBudget:
    """Bytes in use against a limit. `used` may pass `limit` through `charge`, and through
    `reserve` only for a reservation alone."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a memory budget needs at least one byte")
        self.limit = limit
        self.used = 0
        self._reserved = 0  # the part of `used` held by reservations
        self._waiting = 0  # reservations waiting for room
        self._freed = asyncio.Condition()

    def charge(self, size: int) -> None:
        """Count bytes that are already held (a fetched record)."""
        self.used += size

    def release(self, size: int) -> None:
        if size > self.used:
            raise ValueError(f"releasing {size} bytes of {self.used} held")
        self.used -= size
        if self._waiting:  # notify needs the lock, so it runs as its own small task
            asyncio.get_running_loop().create_task(_notify(self._freed))

    @property
    def spent(self) -> bool:
        """True while no more should be fetched."""
        return self.used >= self.limit

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes for the block, waiting until they fit, or until no other
        reservation is held (so one always goes, even over the budget)."""
        async with self._freed:
            self._waiting += 1
            try:
                await self._freed.wait_for(
                    lambda: self.used + size <= self.limit or self._reserved == 0
                )
            finally:
                self._waiting -= 1
            self.used += size
            self._reserved += size
        try:
            yield
        finally:
            self._reserved -= size
            self.release(size)


class Hold:
    """The bytes one event holds (its record, then what its download brought), charged as they
    arrive and released together when the event is answered."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: MemoryBudget, size: int) -> None:
        budget.charge(size)
        self._budget = budget
        self.size = size

    def add(self, size: int) -> None:
        self._budget.charge(size)
        self.size += size

    def release(self) -> None:
        self._budget.release(self.size)
        self.size = 0


async def _notify(condition: asyncio.Condition) -> None:
    async with condition:
        condition.notify_all()
