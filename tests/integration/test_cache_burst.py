"""The Redis cache under a burst: hundreds of events in flight ask at once.

With redis-py's default pool (at most 100 connections, then MaxConnectionsError), a burst
tripped the circuit breaker and the service ran uncached for 5 s after every poll; the cache
now queues callers on a bounded pool instead.
"""

from __future__ import annotations

import asyncio

import numpy as np

from moderator.cache.redis import RedisEmbeddingCache

BURST = 600  # > redis-py's default pool size (100), < moderator's default MAX_IN_FLIGHT (1024)


async def test_a_burst_of_lookups_neither_fails_nor_trips_the_breaker(
    redis_url: str, redis_prefix: str
) -> None:
    results: list[str] = []
    cache = RedisEmbeddingCache(
        redis_url,
        prefix=redis_prefix.rstrip(":"),
        on_result=lambda kind, result, n: results.append(result),
    )
    vector = np.arange(8, dtype=np.float32)
    try:
        await asyncio.gather(
            *(cache.set_many("img:burst", {f"k{i}": vector}, 60) for i in range(BURST))
        )
        found = await asyncio.gather(
            *(cache.get_many("img:burst", [f"k{i}"]) for i in range(BURST))
        )
    finally:
        await cache.aclose()
    assert cache.available
    assert "error" not in results
    assert all(f[0] is not None and np.array_equal(f[0], vector) for f in found)
