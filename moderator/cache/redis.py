"""Embedding cache in Redis: optional by design, so it never raises and never stalls.

Keys are `moderator:{namespace}:{key}` where namespace names the kind and the model
(`txt:<model sha256>`, `img:<model sha256>:<preprocessing digest>`) and key is the sha256 of the
text or image bytes. Values are raw little-endian float32 bytes. When Redis fails, the cache
answers "miss" and stops asking for `retry_after_s` (a circuit breaker): a dead Redis costs one
timeout, not one per event.

Redis is shared and outlives deployments, so a value is checked before it is trusted: with
`dim`, anything but `dim` finite float32s of unit norm is a miss (counted as `invalid`), and
vectors that fail the same check are never written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import numpy as np
import redis.asyncio as aioredis
from numpy.typing import NDArray
from redis.exceptions import RedisError

from moderator.cache.keys import embedding_problem
from moderator.log import get

log = get("cache")
_PREFIX = "moderator"
_MAX_CONNECTIONS = 32  # commands take well under a millisecond; more sockets buy nothing
_FLOAT32_LE = np.dtype("<f4")
# One warning per window however many events meet bad entries: a corrupted namespace is read
# once per event, and the log must not grow with the traffic.
_INVALID_LOG_EVERY_S = 60.0


def decode_entry(value: object, dim: int | None) -> tuple[NDArray[np.float32] | None, str | None]:
    """A stored value as (vector, None), or (None, why it is unusable); never raises."""
    if not isinstance(value, bytes):
        return None, f"is a {type(value).__name__}, not bytes"
    if len(value) % _FLOAT32_LE.itemsize or (dim is not None and len(value) != dim * 4):
        expected = "a multiple of 4" if dim is None else str(dim * 4)
        return None, f"is {len(value)} bytes, expected {expected}"
    vector = np.frombuffer(value, _FLOAT32_LE).astype(np.float32)
    problem = embedding_problem(vector, dim)
    return (None, problem) if problem else (vector, None)


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
        dim: int | None = None,
    ) -> None:
        """`dim`: the model's embedding size; given, only unit vectors of that size are served
        or stored. `on_result(kind, result, n)` counts hit, miss, invalid and error lookups."""
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
        self._dim = dim
        self._invalid_since_log = 0
        self._invalid_logged_at: float | None = None
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

    def _invalid(self, namespace: str, problems: list[str]) -> None:
        """Log bad entries once per window, by count and reason: never a vector or a key."""
        self._invalid_since_log += len(problems)
        now = self._clock()
        last = self._invalid_logged_at
        if last is not None and now - last < _INVALID_LOG_EVERY_S:
            return
        log.warning(
            "invalid cache entries read as misses",
            extra={
                "fields": {
                    "kind": namespace.split(":", 1)[0],
                    "entries": self._invalid_since_log,
                    "example": problems[0],
                    "window_s": _INVALID_LOG_EVERY_S,
                }
            },
        )
        self._invalid_since_log = 0
        self._invalid_logged_at = now

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
        problems: list[str] = []
        # Values are raw bytes: the client is built without decode_responses.
        for value in cast(list[object], raw):
            vector, problem = (None, None) if value is None else decode_entry(value, self._dim)
            out.append(vector)
            if problem is not None:
                problems.append(problem)
        hits = sum(v is not None for v in out)
        if hits:
            self._on_result(kind, "hit", hits)
        if problems:
            self._on_result(kind, "invalid", len(problems))
            self._invalid(namespace, problems)
        if misses := len(out) - hits - len(problems):
            self._on_result(kind, "miss", misses)
        return out

    async def set_many(
        self, namespace: str, items: dict[str, NDArray[np.float32]], ttl_s: int
    ) -> None:
        # A vector this cache would refuse to serve (a NaN from an overflowing fp16 run) is not
        # written: every replica would read it back as a miss anyway.
        rows = {}
        for key, vector in items.items():
            row = np.asarray(vector, dtype=np.float32)
            if embedding_problem(row, self._dim) is None:
                rows[key] = np.ascontiguousarray(row, dtype=_FLOAT32_LE).tobytes()
        if not rows or self._skip():
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, data in rows.items():
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
