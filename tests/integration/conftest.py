"""Fixtures for tests against the real Kafka broker and Redis that `make services` starts.

Unreachable services make the fixtures *fail* (never skip): a CI job whose services did not
come up must go red, not green with every integration test skipped.

Address fixtures are session-scoped. Client fixtures are function-scoped because aiokafka and
redis.asyncio clients are bound to the event loop that created them, and each test runs on its
own loop (asyncio_default_fixture_loop_scope = "function").
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

SERVICES_HINT = "run `make services` (scripts/services.sh up)"
DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Local services answer in milliseconds; a few seconds only absorbs a loaded CI runner.
CONNECT_TIMEOUT_S = 5.0
# Bounds each admin request (create/delete topics) so a wedged broker fails the test quickly.
ADMIN_REQUEST_TIMEOUT_MS = 15_000

_INTEGRATION_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration so `-m "not integration"` can leave them out."""
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _unique(label: str) -> str:
    return f"moderator-test-{label}-{uuid.uuid4().hex[:12]}"


def _first_host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    return host.strip("[]"), int(port)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.hostname}:{parts.port or 6379}").geturl()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the test broker (env MODERATOR_TEST_KAFKA), checked reachable."""
    bootstrap = os.environ.get("MODERATOR_TEST_KAFKA", DEFAULT_KAFKA)
    host, port = _first_host_port(bootstrap)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        error = str(exc)
    else:
        return bootstrap
    # Failing outside the except block keeps the report to one line instead of a chain.
    pytest.fail(
        f"Kafka broker not reachable at {bootstrap} ({error}); {SERVICES_HINT}", pytrace=False
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis (env MODERATOR_TEST_REDIS_URL), checked answering PING."""
    url = os.environ.get("MODERATOR_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
        ) as client:
            client.ping()
    except redis.RedisError as exc:
        error = str(exc)
    else:
        return url
    pytest.fail(
        f"Redis not reachable at {_without_password(url)} ({error}); {SERVICES_HINT}", pytrace=False
    )


class TopicFactory(Protocol):
    """Creates a uniquely named topic and returns its name; deleted at test teardown."""

    async def __call__(
        self, partitions: int = 3, *, label: str = "topic", config: Mapping[str, str] | None = None
    ) -> str: ...


def _raise_for_topic_errors(action: str, response: Any) -> None:
    """aiokafka's admin returns per-topic error codes instead of raising; surface them."""
    # CreateTopics answers under "topic_errors", DeleteTopics under "topic_error_codes".
    for value in response.to_object().values():
        for entry in value if isinstance(value, list) else ():
            if entry.get("error_code", 0) != 0:
                pytest.fail(f"{action} {entry.get('topic')} failed: {entry}")


@pytest.fixture
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Factory for throwaway topics (replication 1), all deleted when the test ends."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka_bootstrap, request_timeout_ms=ADMIN_REQUEST_TIMEOUT_MS
    )
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        pytest.fail(f"Kafka broker at {kafka_bootstrap} did not answer ({exc!r}); {SERVICES_HINT}")
    created: list[str] = []

    async def make(
        partitions: int = 3, *, label: str = "topic", config: Mapping[str, str] | None = None
    ) -> str:
        name = _unique(label)
        new_topic = NewTopic(
            name, num_partitions=partitions, replication_factor=1, topic_configs=dict(config or {})
        )
        _raise_for_topic_errors("create topic", await admin.create_topics([new_topic]))
        created.append(name)
        return name

    try:
        yield make
    finally:
        try:
            if created:
                _raise_for_topic_errors("delete topic", await admin.delete_topics(created))
        finally:
            await admin.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio Redis client on the test Redis; closed (with its pool) at teardown."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A unique key prefix; every key under it is deleted when the test ends."""
    prefix = _unique("redis") + ":"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await redis_client.delete(*keys)
