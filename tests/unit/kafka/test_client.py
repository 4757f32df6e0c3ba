"""Client options `moderator.kafka.client` builds from settings (no broker: nothing is started)."""

from __future__ import annotations

import asyncio

import pytest

from moderator.kafka.client import make_consumer, make_producer
from moderator.settings import KafkaSettings


@pytest.mark.parametrize("idempotent", [True, False])
def test_producer_waits_for_all_replicas_with_or_without_idempotence(idempotent: bool) -> None:
    async def options() -> tuple[int, bool]:
        producer = make_producer(KafkaSettings(idempotent_producer=idempotent))
        try:
            # aiokafka keeps these privately; -1 is acks="all", the manager exists only
            # for idempotent (or transactional) producers.
            return producer._sender._acks, producer._txn_manager is not None
        finally:
            await producer.stop()

    acks, idempotence = asyncio.run(options())
    assert acks == -1
    assert idempotence is idempotent


def test_consumer_fetch_options_come_from_settings() -> None:
    async def options() -> tuple[int, int, bool]:
        consumer = make_consumer(
            KafkaSettings(max_partition_fetch_bytes=8 << 20, fetch_max_wait_ms=50, check_crcs=False)
        )
        try:
            return (
                consumer._max_partition_fetch_bytes,
                consumer._fetch_max_wait_ms,
                consumer._check_crcs,
            )
        finally:
            await consumer.stop()

    assert asyncio.run(options()) == (8 << 20, 50, False)
    assert KafkaSettings().check_crcs  # verified unless switched off
