"""RedisEmbeddingCache's handling of what it reads, against an in-memory stand-in for Redis.

Redis is shared and outlives deployments: whatever bytes sit under a key (another writer's,
a truncated write, a corrupted store) must come back as a usable embedding or as a miss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from moderator.cache.keys import UNIT_NORM_TOLERANCE
from moderator.cache.redis import RedisEmbeddingCache, decode_entry

DIM = 8
NAMESPACE = "img:model:digest"


class FakeRedis:
    """The few commands the cache uses, on a dict of raw values."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def mget(self, keys: list[str]) -> list[Any]:
        return [self.values.get(k) for k in keys]

    @asynccontextmanager
    async def _pipeline(self) -> Any:
        store = self

        class Pipe:
            def set(self, key: str, data: bytes, ex: int) -> None:
                store.values[key] = data

            async def execute(self) -> None:
                return None

        yield Pipe()

    def pipeline(self, transaction: bool) -> Any:
        return self._pipeline()

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def unit(seed: int, dim: int = DIM) -> NDArray[np.float32]:
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def results() -> list[tuple[str, str, int]]:
    return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake() -> FakeRedis:
    return FakeRedis()


def make_cache(
    fake: FakeRedis,
    results: list[tuple[str, str, int]],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    dim: int | None = DIM,
) -> RedisEmbeddingCache:
    # The URL is never dialled: the client is swapped for the fake before any command.
    cache = RedisEmbeddingCache(
        "redis://127.0.0.1:1/0",
        on_result=lambda *r: results.append(r),
        clock=clock,
        prefix="t",
        dim=dim,
    )
    monkeypatch.setattr(cache, "_client", fake)
    return cache


def key(name: str) -> str:
    return f"t:{NAMESPACE}:{name}"


BAD_VALUES = {
    "truncated": unit(1).tobytes()[:-4],
    "not a multiple of 4": unit(1).tobytes() + b"\x00",
    "foreign dimension": unit(1, dim=DIM * 2).tobytes(),
    "empty": b"",
    "nan": np.full(DIM, np.nan, np.float32).tobytes(),
    "inf": np.r_[np.float32(np.inf), np.zeros(DIM - 1, np.float32)].astype(np.float32).tobytes(),
    "all zeros": np.zeros(DIM, np.float32).tobytes(),
    "not unit norm": (unit(1) * 3).tobytes(),
    "text": "a decoded string",
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
async def test_a_bad_entry_is_an_invalid_miss_not_an_error(
    name: str,
    fake: FakeRedis,
    results: list[tuple[str, str, int]],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = make_cache(fake, results, clock, monkeypatch)
    good = unit(2)
    fake.values[key("bad")] = BAD_VALUES[name]
    fake.values[key("good")] = good.tobytes()
    got = await cache.get_many(NAMESPACE, ["bad", "good", "absent"])
    assert got[0] is None
    assert got[1] is not None
    np.testing.assert_array_equal(got[1], good)
    assert got[2] is None
    assert sorted(results) == [("img", "hit", 1), ("img", "invalid", 1), ("img", "miss", 1)]
    assert cache.available


async def test_fp16_rounded_embeddings_still_hit(
    fake: FakeRedis,
    results: list[tuple[str, str, int]],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = make_cache(fake, results, clock, monkeypatch, dim=512)
    rounded = unit(3, dim=512).astype(np.float16).astype(np.float32)
    fake.values[key("k")] = rounded.tobytes()
    (got,) = await cache.get_many(NAMESPACE, ["k"])
    assert got is not None
    assert abs(float(np.linalg.norm(got)) - 1) < UNIT_NORM_TOLERANCE


async def test_invalid_entries_are_logged_once_per_window_without_the_vector(
    fake: FakeRedis,
    results: list[tuple[str, str, int]],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = make_cache(fake, results, clock, monkeypatch)
    poison = np.full(DIM, 0.123456, np.float32)
    for i in range(5):
        fake.values[key(f"k{i}")] = poison.tobytes()
    with caplog.at_level(logging.WARNING, logger="moderator.cache"):
        for i in range(5):  # a burst: one lookup per event, as the service makes them
            await cache.get_many(NAMESPACE, [f"k{i}"])
        clock.now += 61
        await cache.get_many(NAMESPACE, ["k0"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    fields = [r.__dict__["fields"] for r in warnings]
    assert [f["entries"] for f in fields] == [1, 5]
    assert all("0.123" not in str(f) and "k0" not in str(f) for f in fields)
    assert sum(n for _, result, n in results if result == "invalid") == 6


async def test_invalid_vectors_are_not_written(
    fake: FakeRedis,
    results: list[tuple[str, str, int]],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = make_cache(fake, results, clock, monkeypatch)
    good = unit(4)
    await cache.set_many(
        NAMESPACE,
        {"good": good, "nan": np.full(DIM, np.nan, np.float32), "short": unit(4, dim=3)},
        ttl_s=60,
    )
    assert list(fake.values) == [key("good")]
    (got,) = await cache.get_many(NAMESPACE, ["good"])
    assert got is not None
    np.testing.assert_array_equal(got, good)


async def test_without_a_dimension_any_finite_vector_round_trips(
    fake: FakeRedis,
    results: list[tuple[str, str, int]],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = make_cache(fake, results, clock, monkeypatch, dim=None)
    vector = np.arange(5, dtype=np.float32)
    await cache.set_many(NAMESPACE, {"k": vector}, ttl_s=60)
    fake.values[key("odd")] = b"\x00" * 7
    got, odd = await cache.get_many(NAMESPACE, ["k", "odd"])
    assert got is not None
    np.testing.assert_array_equal(got, vector)
    assert odd is None


def _valid_rows() -> Iterator[bytes]:
    yield unit(5).tobytes()
    yield unit(6).astype(np.float16).astype(np.float32).tobytes()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(
        st.binary(max_size=3 * DIM * 4),
        st.binary(min_size=DIM * 4, max_size=DIM * 4),
        st.lists(st.floats(width=32), min_size=DIM, max_size=DIM).map(
            lambda xs: np.asarray(xs, np.float32).tobytes()
        ),
        st.sampled_from(list(_valid_rows())),
    )
)
def test_any_stored_bytes_decode_to_a_unit_vector_of_the_dimension_or_none(value: bytes) -> None:
    vector, problem = decode_entry(value, DIM)
    if vector is None:
        assert problem
    else:
        assert problem is None
        assert vector.dtype == np.float32
        assert vector.shape == (DIM,)
        assert np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector)) - 1) < UNIT_NORM_TOLERANCE


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.none(), st.binary(max_size=80)), min_size=1, max_size=6))
async def test_get_many_never_raises_on_stored_bytes(
    values: list[bytes | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRedis()
    results: list[tuple[str, str, int]] = []
    cache = make_cache(fake, results, Clock(), monkeypatch)
    for i, value in enumerate(values):
        if value is not None:
            fake.values[key(str(i))] = value
    got = await cache.get_many(NAMESPACE, [str(i) for i in range(len(values))])
    assert len(got) == len(values)
    assert all(v is None or v.shape == (DIM,) for v in got)
    assert sum(n for _, _, n in results) == len(values)
