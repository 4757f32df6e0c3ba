"""Policy compilation and reload against the real Redis cache (`make services`)."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
import redis.asyncio as aioredis

from moderator.cache.redis import RedisEmbeddingCache
from moderator.policy.compile import compile_policy
from moderator.policy.load import load_policies
from moderator.policy.reload import PolicyReloader


def _load_fakes() -> ModuleType:
    """The unit tests' fake encoders, loaded by path (tests/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "unit" / "policy" / "fakes.py"
    spec = importlib.util.spec_from_file_location("moderator_policy_test_fakes", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _load_fakes()

POLICY = """\
version: 1
name: test
concepts:
  - id: weapons.firearm
    category: weapons
    prompts: [a photo of a handgun, a person holding a rifle]
    counter_prompts: [a toy water gun]
"""


@pytest.fixture
async def model_name(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A model identity of its own, so keys never meet another test's; deleted afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    sha = fakes.FakeEncoder(name=name).sha256
    keys = [k async for k in redis_client.scan_iter(match=f"moderator:*:{sha}:*", count=500)]
    if keys:
        await redis_client.delete(*keys)


async def test_a_restarted_replica_embeds_nothing_again(
    redis_url: str, model_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    first = fakes.CountingEncoder(fakes.FakeEncoder(name=model_name))
    cache = RedisEmbeddingCache(redis_url)
    try:
        compiled = await compile_policy(load_policies(path), first, cache)
    finally:
        await cache.aclose()
    assert len(first.texts) == 3
    second = fakes.CountingEncoder(fakes.FakeEncoder(name=model_name))
    cache = RedisEmbeddingCache(redis_url)
    try:
        again = await compile_policy(load_policies(path), second, cache)
    finally:
        await cache.aclose()
    assert second.texts == []
    assert again.version == compiled.version
    assert (again.text_embeddings == compiled.text_embeddings).all()


async def test_reload_through_redis_embeds_only_the_edited_prompt(
    redis_url: str, model_name: str, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    encoder = fakes.CountingEncoder(fakes.FakeEncoder(name=model_name))
    cache = RedisEmbeddingCache(redis_url)
    try:
        reloader = PolicyReloader(path, encoder, cache)
        first = await reloader.load()
        encoder.texts.clear()
        path.write_text(POLICY.replace("a person holding a rifle", "a person aiming a rifle"))
        assert await reloader.check() is True
        assert encoder.texts == ["a person aiming a rifle"]
        assert reloader.current.version != first.version
    finally:
        await cache.aclose()


async def test_an_unreachable_redis_only_costs_cache_misses(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    encoder = fakes.CountingEncoder(fakes.FakeEncoder())
    cache = RedisEmbeddingCache("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        compiled = await compile_policy(load_policies(path), encoder, cache)
    finally:
        await cache.aclose()
    assert len(encoder.texts) == 3
    assert len(compiled.concepts) == 1
