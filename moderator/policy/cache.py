"""Where compiled text and reference-image embeddings are remembered between compiles.

A policy reload usually changes one prompt; embedding only what changed keeps reloads fast on a
busy GPU. Entries are keyed by content: the namespace names the kind and the model
(`txt:<model sha256>`, `img:<model sha256>`) and the key is the sha256 of the text or image
bytes, so a new model or an edited prompt can never be served a stale vector.

`moderator.cache.RedisEmbeddingCache` is the shared implementation used in production; the
in-memory one here serves tests and one-shot CLI runs.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

TEXT_KIND = "txt"
IMAGE_KIND = "img"


class EmbeddingCache(Protocol):
    """Content-addressed vector store. Implementations never raise: trouble reads as a miss."""

    async def get_many(
        self, namespace: str, keys: list[str]
    ) -> list[NDArray[np.float32] | None]: ...

    async def set_many(
        self, namespace: str, items: dict[str, NDArray[np.float32]], ttl_s: int
    ) -> None: ...


def namespace(kind: str, model_sha256: str) -> str:
    """`txt:<sha>` / `img:<sha>`: a model's vectors never mix with another model's."""
    return f"{kind}:{model_sha256}"


def content_key(data: str | bytes) -> str:
    """sha256 hex of a text (UTF-8) or of raw image bytes."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


class MemoryEmbeddingCache:
    """An EmbeddingCache in a dict: bounded, with TTLs, and counting hits for tests and reports."""

    def __init__(
        self, max_items: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # The bound only matters when this cache is (mis)used for image traffic; policy texts
        # number in the hundreds.
        self._items: OrderedDict[tuple[str, str], tuple[float, NDArray[np.float32]]] = OrderedDict()
        self._max_items = max_items
        self._clock = clock
        self.hits = 0
        self.misses = 0

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
