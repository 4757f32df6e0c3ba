"""RedisEmbeddingCache against the real Redis, including a Redis that is not there."""

import numpy as np
import redis.asyncio as aioredis

from moderator.cache.redis import RedisEmbeddingCache


async def test_round_trip_hits_and_misses(redis_url: str, redis_prefix: str) -> None:
    results: list[tuple[str, str, int]] = []
    cache = RedisEmbeddingCache(
        redis_url, prefix=redis_prefix.rstrip(":"), on_result=lambda *r: results.append(r)
    )
    try:
        vector = np.arange(8, dtype=np.float32) / 10
        await cache.set_many("img:model", {"abc": vector}, ttl_s=60)
        got = await cache.get_many("img:model", ["abc", "missing"])
    finally:
        await cache.aclose()
    assert got[1] is None
    assert got[0] is not None
    np.testing.assert_array_equal(got[0], vector)
    assert ("img", "hit", 1) in results
    assert ("img", "miss", 1) in results


async def test_keys_carry_a_ttl(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    cache = RedisEmbeddingCache(redis_url, prefix=redis_prefix.rstrip(":"))
    try:
        await cache.set_many("txt:m", {"k": np.ones(4, np.float32)}, ttl_s=120)
    finally:
        await cache.aclose()
    ttl = await redis_client.ttl(f"{redis_prefix}txt:m:k")
    assert 0 < ttl <= 120


async def test_unreachable_redis_degrades_to_misses_without_raising() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    clock = [0.0]
    cache = RedisEmbeddingCache(
        "redis://127.0.0.1:1/0", timeout_s=0.2, retry_after_s=5.0, clock=lambda: clock[0]
    )
    try:
        assert await cache.get_many("img:m", ["a", "b"]) == [None, None]
        assert cache.available is False
        await cache.set_many("img:m", {"a": np.ones(2, np.float32)}, ttl_s=1)
        assert await cache.ping() is False
    finally:
        await cache.aclose()


async def test_foreign_and_corrupted_values_read_as_invalid_misses(
    redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    results: list[tuple[str, str, int]] = []
    cache = RedisEmbeddingCache(
        redis_url, prefix=redis_prefix.rstrip(":"), on_result=lambda *r: results.append(r), dim=8
    )
    good = np.full(8, 8**-0.5, dtype=np.float32)
    bad = {
        "short": good.tobytes()[:-4],
        "odd": good.tobytes() + b"\x00",
        "nan": np.full(8, np.nan, np.float32).tobytes(),
        "zeros": np.zeros(8, np.float32).tobytes(),
        "text": b"not a vector at all",
    }
    for name, value in bad.items():
        await redis_client.set(f"{redis_prefix}img:m:{name}", value, ex=60)
    try:
        await cache.set_many("img:m", {"good": good, "unwritten": good * 2}, ttl_s=60)
        got = await cache.get_many("img:m", ["good", "unwritten", *bad])
    finally:
        await cache.aclose()
    assert got[0] is not None
    np.testing.assert_array_equal(got[0], good)
    assert got[1:] == [None] * (1 + len(bad))
    assert await redis_client.exists(f"{redis_prefix}img:m:unwritten") == 0
    assert sorted(results) == [("img", "hit", 1), ("img", "invalid", 5), ("img", "miss", 1)]
    assert cache.available
