"""An in-memory Kafka for tests: a broker, a group member and a producer that satisfy the same
Protocols as the real clients (`GroupClient`, `ProducerClient`), so the route and the commit
loop run whole, with no broker, in milliseconds.

What it models: topics of partitions of records with offsets; one group's committed offsets;
a member that is assigned every partition of its topic on start, polls from the committed
offsets onward, pauses and resumes partitions; eager rebalances (`FakeBroker.rebalance`), as
aiokafka does them: every partition is revoked (after its callback commits), then the new set
is assigned, unpaused, from the committed offsets. The fake runs the callbacks at the member's
next poll, where aiokafka runs them from its coordinator task while the consumer is awaited.
What it does not: replication, transactions, record size limits, more than one member per
group. Failures are injected by the test: `fail_sends`, `fail_commits`, `fail_polls` each
make the next n calls fail the way the real clients' translated errors do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass, field

from moderator.errors import CommitFailed, KafkaFailed, PublishFailed
from moderator.kafka.types import TP, Headers, OnAssigned, OnRevoked, Record


@dataclass(frozen=True, slots=True)
class FakeRecord:
    """A record as the fake stores and delivers it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))

    def header(self, name: str) -> bytes | None:
        """The first header called `name`, or None."""
        return next((v for n, v in self.headers if n == name), None)


class FakeBroker:
    """Topics, committed offsets and the failures a test asks for."""

    def __init__(self, partitions: int = 1) -> None:
        self._default_partitions = partitions
        self.topics: dict[str, list[list[FakeRecord]]] = {}
        self.committed: dict[TP, int] = {}
        self.fail_sends = 0
        self.fail_commits = 0
        self.fail_polls = 0
        self._arrived = asyncio.Event()
        self._members: list[FakeGroupConsumer] = []

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        count = partitions or self._default_partitions
        self.topics.setdefault(topic, [[] for _ in range(count)])

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> FakeRecord:
        """Store one record (by key hash, or `partition`) and wake polling members."""
        self.create_topic(topic)
        parts = self.topics[topic]
        if partition is None:
            partition = zlib.crc32(key) % len(parts) if key is not None else 0
        stamp = int(time.time() * 1000) if timestamp is None else timestamp
        record = FakeRecord(
            topic, partition, len(parts[partition]), key, value, tuple(headers), stamp
        )
        parts[partition].append(record)
        self._arrived.set()
        return record

    def records(self, topic: str) -> list[FakeRecord]:
        """Every record of `topic`, partition by partition."""
        return [r for part in self.topics.get(topic, []) for r in part]

    def end(self, part: TP) -> int:
        topic, partition = part
        return len(self.topics[topic][partition])

    def rebalance(self, assignment: Collection[TP]) -> None:
        """Rebalance every member onto `assignment` at its next poll."""
        for member in self._members:
            member.pending = set(assignment)
        self._arrived.set()

    async def wait_for_records(self, timeout_s: float) -> None:
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout_s)


class FakeProducer:
    """A `ProducerClient` writing to a `FakeBroker`; acks resolve at once."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        if self.broker.fail_sends:
            self.broker.fail_sends -= 1
            raise PublishFailed(f"{topic}: the fake broker refused the send")
        if key is None and value is None:
            value = b""
        self.broker.append(topic, value, key=key, headers=headers, partition=partition)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def stop(self) -> None:
        self.started = False


class FakeGroupConsumer:
    """A `GroupClient` of one group on a `FakeBroker`: on start it is assigned every
    partition of its topic and reads each from the committed offset (or the start)."""

    def __init__(self, broker: FakeBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.pending: set[TP] | None = None
        self.paused: set[TP] = set()
        self.commits: list[dict[TP, int]] = []
        self._positions: dict[TP, int] = {}
        self._on_assigned: OnAssigned | None = None
        self._on_revoked: OnRevoked | None = None
        broker._members.append(self)

    async def start(self, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None:
        self.broker.create_topic(self.topic)
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self.pending = {(self.topic, p) for p in range(len(self.broker.topics[self.topic]))}

    async def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        if self.broker.fail_polls:
            self.broker.fail_polls -= 1
            raise KafkaFailed("poll: the fake broker is away")
        await self._apply_rebalance()
        out = self._take(max_records)
        if not out:
            await self.broker.wait_for_records(timeout_s)
            await self._apply_rebalance()
            out = self._take(max_records)
        return out

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        if self.broker.fail_commits:
            self.broker.fail_commits -= 1
            raise CommitFailed("the fake broker refused the commit")
        if not set(offsets) <= set(self._positions):
            raise CommitFailed(f"not assigned: {sorted(set(offsets) - set(self._positions))}")
        self.commits.append(dict(offsets))
        self.broker.committed.update(offsets)

    def assignment(self) -> set[TP]:
        return set(self._positions)

    def pause(self, parts: Collection[TP]) -> None:
        self.paused |= set(parts)

    def resume(self, parts: Collection[TP]) -> None:
        self.paused -= set(parts)

    def highwater(self, part: TP) -> int | None:
        return self.broker.end(part) if part in self._positions else None

    async def stop(self) -> None:
        self._positions.clear()

    async def _apply_rebalance(self) -> None:
        if self.pending is None:
            return
        wanted, self.pending = self.pending, None
        assert self._on_assigned is not None  # started
        assert self._on_revoked is not None
        revoked = set(self._positions)
        if revoked:
            await self._on_revoked(revoked)
        self._positions.clear()
        self.paused.clear()
        for part in sorted(wanted):
            self.broker.create_topic(part[0])
            self._positions[part] = self.broker.committed.get(part, 0)
        if wanted:
            self._on_assigned(set(wanted))

    def _take(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        for part, position in sorted(self._positions.items()):
            if part in self.paused:
                continue
            topic, partition = part
            chunk = self.broker.topics[topic][partition][
                position : position + max_records - len(out)
            ]
            out.extend(chunk)
            self._positions[part] = position + len(chunk)
            if len(out) >= max_records:
                break
        return out
