"""Client options `moderator.kafka.client` builds from settings (no broker: nothing is started)."""

from __future__ import annotations

import asyncio

import pytest

from moderator.kafka import make_consumer, make_producer
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


class _Refusing:
    """Stands in for aiokafka's clients: every call fails as aiokafka fails."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def send(self, *args: object, **kwargs: object) -> object:
        raise self.error

    async def getmany(self, *args: object, **kwargs: object) -> object:
        raise self.error

    async def commit(self, *args: object, **kwargs: object) -> None:
        raise self.error

    async def stop(self) -> None:
        return None


async def test_the_adapter_translates_aiokafka_errors() -> None:
    from aiokafka.errors import CommitFailedError, KafkaTimeoutError, NodeNotReadyError

    from moderator.errors import CommitFailed, KafkaFailed, PublishFailed, ServiceFault
    from moderator.kafka import GroupConsumer, Producer

    producer = Producer(KafkaSettings())
    await producer._producer.stop()
    producer._producer = _Refusing(KafkaTimeoutError())  # type: ignore[assignment]
    with pytest.raises(PublishFailed, match="verdicts: KafkaTimeoutError"):
        await producer.send("verdicts", b"v")
    consumer = GroupConsumer(KafkaSettings(), "in", max_decompressed=1 << 20)
    await consumer.stop()
    consumer._consumer = _Refusing(NodeNotReadyError())  # type: ignore[assignment]
    with pytest.raises(KafkaFailed, match="poll"):
        await consumer.poll(0.1, 10)
    consumer._consumer = _Refusing(CommitFailedError())  # type: ignore[assignment]
    with pytest.raises(CommitFailed):
        await consumer.commit({("in", 0): 5})
    assert issubclass(KafkaFailed, ServiceFault)  # never dead-lettered


async def test_a_record_with_neither_key_nor_value_is_sent_with_an_empty_value() -> None:
    from moderator.kafka import Producer

    sent: list[tuple[object, ...]] = []

    class _Taking:
        async def send(self, topic: str, value: bytes | None, **kwargs: object) -> object:
            sent.append((topic, value, kwargs["key"]))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    producer = Producer(KafkaSettings())
    await producer._producer.stop()
    producer._producer = _Taking()  # type: ignore[assignment]
    await (await producer.send("dlq", None))
    assert sent == [("dlq", b"", None)]  # aiokafka refuses a record with neither
