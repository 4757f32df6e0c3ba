"""An in-process embedding cache: the fake of `moderator.cache.redis` that tests and one-shot
commands use, with the same entry checks, so they see the misses production would."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from moderator.cache.keys import embedding_problem


class MemoryEmbeddingCache:
    """An EmbeddingCache in a dict: bounded, with TTLs, and counting hits for tests and reports.

    It checks entries on the way out as the Redis one does (`dim`, `embedding_problem`), so a
    test or tool sees the same misses production would.
    """

    def __init__(
        self,
        max_items: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        *,
        dim: int | None = None,
    ) -> None:
        # The bound only matters when this cache is (mis)used for image traffic; policy texts
        # number in the hundreds.
        self._items: OrderedDict[tuple[str, str], tuple[float, NDArray[np.float32]]] = OrderedDict()
        self._max_items = max_items
        self._clock = clock
        self._dim = dim
        self.hits = 0
        self.misses = 0
        self.invalid = 0

    def __len__(self) -> int:
        return len(self._items)

    async def get_many(self, namespace: str, keys: list[str]) -> list[NDArray[np.float32] | None]:
        now = self._clock()
        out: list[NDArray[np.float32] | None] = []
        for key in keys:
            entry = self._items.get((namespace, key))
            if entry is None or entry[0] <= now:
                if entry is not None:
                    del self._items[(namespace, key)]
                self.misses += 1
                out.append(None)
            elif embedding_problem(entry[1], self._dim) is not None:
                del self._items[(namespace, key)]
                self.invalid += 1
                out.append(None)
            else:
                self._items.move_to_end((namespace, key))
                self.hits += 1
                out.append(entry[1].copy())
        return out

    async def set_many(
        self, namespace: str, items: dict[str, NDArray[np.float32]], ttl_s: int
    ) -> None:
        expires = self._clock() + ttl_s
        for key, vector in items.items():
            stored = np.array(vector, dtype=np.float32, copy=True)
            stored.flags.writeable = False
            self._items[(namespace, key)] = (expires, stored)
            self._items.move_to_end((namespace, key))
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)
