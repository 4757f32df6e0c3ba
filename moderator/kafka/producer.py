"""The producer every command and `serve` publish with: acks=all, idempotent, errors translated.

`send` returns once the record is queued, with an awaitable that resolves on the broker's
acknowledgement: callers that pipeline many sends await the acks afterwards. Every aiokafka
failure, at either step, becomes `PublishFailed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Generator
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from moderator.errors import PublishFailed
from moderator.kafka.client import MAX_REQUEST_SIZE, client_options
from moderator.kafka.types import Headers
from moderator.settings import KafkaSettings


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all + idempotence: a retried send never duplicates or reorders within a partition
    (unless `idempotent_producer` is off, for brokers that cannot do it)."""
    options = client_options(settings) | {
        "acks": "all",
        "enable_idempotence": settings.idempotent_producer,
        "linger_ms": 5,  # a few ms of batching buys far fewer produce requests under load
        "compression_type": None,
        "max_request_size": MAX_REQUEST_SIZE,
    }
    return AIOKafkaProducer(**(options | overrides))


class _Ack:
    """One send's acknowledgement; awaiting it raises `PublishFailed` where aiokafka failed."""

    __slots__ = ("_future", "_topic")

    def __init__(self, future: asyncio.Future[Any], topic: str) -> None:
        self._future = future
        self._topic = topic

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        try:
            await self._future
        except KafkaError as exc:
            raise PublishFailed(f"{self._topic}: {type(exc).__name__}: {exc}") from exc


class Producer:
    """An acks=all producer built from `KafkaSettings` (see `make_producer`)."""

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        self._producer = make_producer(settings, **overrides)

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise PublishFailed(f"cannot start a producer: {type(exc).__name__}: {exc}") from exc

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Awaitable[None]:
        """Queue one record (stamped now, or at `timestamp_ms`); await the result for the
        broker's acknowledgement."""
        if key is None and value is None:
            value = b""  # aiokafka refuses a record with neither; an empty value is one
        try:
            future = await self._producer.send(
                topic,
                value,
                key=key,
                headers=list(headers),
                partition=partition,
                timestamp_ms=timestamp_ms,
            )
        except KafkaError as exc:
            raise PublishFailed(f"{topic}: {type(exc).__name__}: {exc}") from exc
        return _Ack(future, topic)

    async def flush(self) -> None:
        await self._producer.flush()

    async def stop(self) -> None:
        await self._producer.stop()
