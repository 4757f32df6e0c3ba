"""What the rest of the code sees of Kafka: records, partitions, and the client Protocols that
both the real clients (`consumer`, `producer`) and the in-memory fake (`fake`) satisfy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Protocol

TP = tuple[str, int]
"""A topic partition: (topic, partition)."""

Headers = Sequence[tuple[str, bytes | None]]


class Record(Protocol):
    """A consumed record. aiokafka's `ConsumerRecord` is one, as are the fake's records and
    the stand-ins `moderator.kafka.records` makes for batches nobody could read."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers: ...


OnRevoked = Callable[[set[TP]], Awaitable[None]]
OnAssigned = Callable[[set[TP]], None]


class GroupClient(Protocol):
    """A consumer-group member that commits by hand (what `serve` consumes with)."""

    async def start(self, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None: ...
    async def poll(self, timeout_s: float, max_records: int) -> list[Record]: ...
    async def commit(self, offsets: Mapping[TP, int]) -> None: ...
    def assignment(self) -> set[TP]: ...
    def pause(self, parts: Collection[TP]) -> None: ...
    def resume(self, parts: Collection[TP]) -> None: ...
    def highwater(self, part: TP) -> int | None: ...
    async def stop(self) -> None: ...


class ProducerClient(Protocol):
    """An acks=all producer (what `serve` and the tools publish with)."""

    async def start(self) -> None: ...
    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Awaitable[None]: ...
    async def stop(self) -> None: ...
