"""Consumers: the group member `serve` consumes with, and group-less readers for tools.

Both read fetched batches through `moderator.kafka.records`, so no record's bytes can stop a
poll, and both raise `KafkaFailed` (or `CommitFailed`) in place of aiokafka's errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from moderator.errors import CommitFailed, KafkaFailed
from moderator.kafka import records
from moderator.kafka.admin import topic_partitions
from moderator.kafka.client import client_options
from moderator.kafka.types import TP, OnAssigned, OnRevoked, Record
from moderator.log import get
from moderator.settings import KafkaSettings

log = get("kafka")


def make_consumer(
    settings: KafkaSettings,
    *topics: str,
    max_decompressed: int = records.DEFAULT_MAX_DECOMPRESSED,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A group consumer with auto-commit off: offsets are committed only after acks. Fetched
    batches are read by `records`, so no record's bytes can stop it, and no compressed batch
    inflates past `max_decompressed` bytes."""
    records.install(max_decompressed)
    options = client_options(settings) | {
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.max_poll_records,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "check_crcs": settings.check_crcs,
        "session_timeout_ms": settings.session_timeout_ms,
        "isolation_level": "read_committed",
    }
    return AIOKafkaConsumer(*topics, **(options | overrides))


async def _poll(
    consumer: AIOKafkaConsumer, timeout_s: float, max_records: int | None
) -> list[Record]:
    """One fetch's records, partition by partition, in offset order within each."""
    try:
        batches = await consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
    except KafkaError as exc:
        raise KafkaFailed(f"poll: {type(exc).__name__}: {exc}") from exc
    return [record for part in batches.values() for record in part]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._on_assigned({(tp.topic, tp.partition) for tp in assigned})


class GroupConsumer:
    """A member of `settings.group_id` subscribed to one topic, committing by hand."""

    def __init__(self, settings: KafkaSettings, topic: str, *, max_decompressed: int) -> None:
        self._topic = topic
        self._consumer = make_consumer(settings, max_decompressed=max_decompressed)

    async def start(self, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None:
        """Subscribe and join. The client runs the callbacks when partitions move (a rebalance
        revokes every partition, then assigns the new set), while the loop awaits it."""
        self._consumer.subscribe([self._topic], listener=_Listener(on_assigned, on_revoked))
        try:
            await self._consumer.start()
        except KafkaError as exc:
            raise KafkaFailed(f"cannot start the consumer: {type(exc).__name__}: {exc}") from exc

    async def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        return await _poll(self._consumer, timeout_s, max_records)

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        try:
            await self._consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except KafkaError as exc:  # CommitFailedError (a rebalance) is one
            raise CommitFailed(f"{type(exc).__name__}: {exc}") from exc

    def assignment(self) -> set[TP]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, parts: Collection[TP]) -> None:
        self._consumer.pause(*(TopicPartition(t, p) for t, p in parts))

    def resume(self, parts: Collection[TP]) -> None:
        self._consumer.resume(*(TopicPartition(t, p) for t, p in parts))

    def highwater(self, part: TP) -> int | None:
        end: int | None = self._consumer.highwater(TopicPartition(*part))
        return end

    async def stop(self) -> None:
        await self._consumer.stop()


class Reader:
    """A consumer with no group, assigned every partition of some topics: for tools that watch
    output topics (demo, benchmarks, the fault suite, tests). It never joins, rebalances or
    commits anything of the service's."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    async def poll(self, timeout_s: float = 0.2, max_records: int | None = None) -> list[Record]:
        return await _poll(self._consumer, timeout_s, max_records)

    async def close(self) -> None:
        await self._consumer.stop()


async def open_reader(
    settings: KafkaSettings, topics: list[str], *, from_start: bool = True, **overrides: Any
) -> Reader:
    """A started `Reader` of `topics`, positioned at the oldest records (`from_start`) or at
    the current end, resolved before this returns."""
    parts = [TopicPartition(t, p) for t, p in await topic_partitions(settings, topics)]
    consumer = make_consumer(settings, group_id=None, **overrides)
    try:
        await consumer.start()
        consumer.assign(parts)
        # A topic created a moment ago may name a leader that is not leading yet: aiokafka
        # retries the offset lookup, and each retry is not worth an error line.
        with _quiet_leader_retries():
            if from_start:
                await consumer.seek_to_beginning(*parts)
            else:
                await consumer.seek_to_end(*parts)
            for tp in parts:
                await consumer.position(tp)
    except KafkaError as exc:
        await consumer.stop()
        raise KafkaFailed(f"cannot open a reader: {type(exc).__name__}: {exc}") from exc
    return Reader(consumer)


async def close_reader(task: asyncio.Task[Any] | None, reader: Reader | None) -> None:
    """Stop a reader: cancel the task draining it, then the reader."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if reader is not None:
        await reader.close()


class _LeaderRetries(logging.Filter):
    """Drops aiokafka's error line for an offset lookup that it retries after a leader change."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "NotLeaderForPartitionError" in text or "LeaderNotAvailableError" in text:
            log.debug("offset lookup retried: no leader yet", extra={"fields": {"why": text}})
            return False
        return True


@contextlib.contextmanager
def _quiet_leader_retries() -> Iterator[None]:
    fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
    quiet = _LeaderRetries()
    fetcher_log.addFilter(quiet)
    try:
        yield
    finally:
        fetcher_log.removeFilter(quiet)
