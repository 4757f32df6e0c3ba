"""Embedding cache in Redis: optional by design, so it never raises and never stalls.

Keys are `moderator:{namespace}:{key}` where namespace names the kind and the model
(`img:<model sha256>`, `txt:<model sha256>`) and key is the sha256 of the image bytes or text.
Values are raw float32 bytes. When Redis fails, the cache answers "miss" and stops asking for
`retry_after_s` (a circuit breaker): a dead Redis costs one timeout, not one per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import numpy as np
import redis.asyncio as aioredis
from numpy.typing import NDArray
from redis.exceptions import RedisError

from moderator.log import get

log = get("cache")
_PREFIX = "moderator"
_MAX_CONNECTIONS = 32  # commands take well under a millisecond; more sockets buy nothing


class RedisEmbeddingCache:
    """Implements the policy layer's EmbeddingCache Protocol on Redis."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.5,
        retry_after_s: float = 5.0,
        on_result: Callable[[str, str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = _PREFIX,
    ) -> None:
        # A pool that queues callers: with hundreds of events in flight a burst must wait a
        # moment for a connection. redis-py's plain pool raises MaxConnectionsError past its
        # limit (100 in redis-py 8) instead, which tripped the breaker on every burst.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=_MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self._client = aioredis.Redis.from_pool(pool)
        self._prefix = prefix
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._clock = clock
        self._on_result = on_result or (lambda kind, result, n: None)
        self.available = True

    def _skip(self) -> bool:
        return self._clock() < self._down_until

    def _failed(self, exc: Exception) -> None:
        if self.available:
            # Redis URLs may carry a password: log the error class and text, never the URL.
            log.warning(
                "redis unavailable; continuing uncached",
                extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}},
            )
        self.available = False
        self._down_until = self._clock() + self._retry_after_s

    def _recovered(self) -> None:
        if not self.available:
            log.info("redis is back; caching again")
        self.available = True

    async def get_many(self, namespace: str, keys: list[str]) -> list[NDArray[np.float32] | None]:
        kind = namespace.split(":", 1)[0]
        if not keys:
            return []
        if self._skip():
            self._on_result(kind, "error", len(keys))
            return [None] * len(keys)
        try:
            raw = await self._client.mget([f"{self._prefix}:{namespace}:{k}" for k in keys])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            self._on_result(kind, "error", len(keys))
            return [None] * len(keys)
        self._recovered()
        out: list[NDArray[np.float32] | None] = []
        for value in raw:
            # Values are raw bytes: the client is built without decode_responses.
            raw_bytes = cast(bytes, value)
            out.append(None if value is None else np.frombuffer(raw_bytes, np.float32).copy())
        hits = sum(v is not None for v in out)
        if hits:
            self._on_result(kind, "hit", hits)
        if len(out) - hits:
            self._on_result(kind, "miss", len(out) - hits)
        return out

    async def set_many(
        self, namespace: str, items: dict[str, NDArray[np.float32]], ttl_s: int
    ) -> None:
        if not items or self._skip():
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, vector in items.items():
                    data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
                    pipe.set(f"{self._prefix}:{namespace}:{key}", data, ex=ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._recovered()

    async def ping(self) -> bool:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    async def aclose(self) -> None:
        await self._client.aclose()
