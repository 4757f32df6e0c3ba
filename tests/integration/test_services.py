"""Smoke tests proving the local services behave like the production ones the service relies on.

They exercise exactly the client features moderator uses: an idempotent acks=all producer,
a consumer group with manual commits, and plain Redis keys with TTLs.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from moderator import kafka
from moderator.settings import KafkaSettings

if TYPE_CHECKING:  # conftest is loaded by pytest; import it only for the annotation
    from tests.integration.conftest import TopicFactory

RECORDS_PER_KEY = 4
KEYS = (b"img-a", b"img-b", b"img-c")
# Upper bound for the whole consume loop; the first group join also creates __consumer_offsets.
CONSUME_DEADLINE_S = 30.0


async def _produce(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for seq in range(RECORDS_PER_KEY):
            for key in KEYS:
                await producer.send_and_wait(topic, key=key, value=b"%s:%d" % (key, seq))
    finally:
        await producer.stop()


async def _consume_all(
    consumer: AIOKafkaConsumer, expected: int
) -> list[ConsumerRecord[bytes, bytes]]:
    records: list[ConsumerRecord[bytes, bytes]] = []
    async with asyncio.timeout(CONSUME_DEADLINE_S):
        while len(records) < expected:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    return records


async def test_kafka_round_trip_with_manual_commit(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory(partitions=3, label="roundtrip")
    await _produce(kafka_bootstrap, topic)

    group = f"moderator-test-group-{uuid.uuid4().hex[:12]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        records = await _consume_all(consumer, len(KEYS) * RECORDS_PER_KEY)
        await consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(3)]
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        end_offsets = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()

    assert len(records) == len(KEYS) * RECORDS_PER_KEY
    for key in KEYS:
        of_key = [r for r in records if r.key == key]
        # Same key -> same partition, and order within a partition is preserved.
        assert len({r.partition for r in of_key}) == 1
        assert [r.value for r in of_key] == [b"%s:%d" % (key, s) for s in range(RECORDS_PER_KEY)]
    # The manual commit reached the group coordinator: committed == log end on every partition.
    assert {tp: off or 0 for tp, off in committed.items()} == end_offsets


async def test_redis_round_trip(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}verdict"
    assert await redis_client.set(key, b"flag", px=60_000)
    assert await redis_client.get(key) == b"flag"
    assert 0 < await redis_client.pttl(key) <= 60_000
    assert await redis_client.incr(f"{redis_prefix}counter") == 1


async def test_wait_until_ready_sees_led_topics_and_a_coordinator(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = await topic_factory(3, label="ready")
    assert await kafka.wait_until_ready(settings, [topic], group_id="moderator-ready-test")


async def test_max_message_bytes_reads_every_topics_limit_in_one_call(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    small = await topic_factory(1, label="limit-small", config={"max.message.bytes": "50000"})
    plain = await topic_factory(1, label="limit-plain")
    limits = await kafka.max_message_bytes(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), [small, plain]
    )
    assert limits[small] == 50_000
    assert limits[plain] == kafka.DEFAULT_MAX_MESSAGE_BYTES  # the broker's default here
