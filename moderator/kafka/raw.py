"""Sending records that well-behaved clients cannot write: header names of any bytes. A tool for
tests and the fault suite, never used by `serve`.

aiokafka's producer takes header names as `str` and encodes them as UTF-8, so it can never send
what a non-Python producer may: a header name that is not UTF-8. The hostile corpus and the
fuzz scenario need exactly that. `send_raw` builds the record batch with aiokafka's pure-Python
batch writer, handing it `RawName`s (a `str` whose `encode()` returns the chosen bytes), and
submits it through the producer's public `send_batch`. `RawProducer` is a `Producer` that
does the same, with aiokafka's errors translated like every other client here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from moderator.errors import PublishFailed
from moderator.kafka.producer import Producer
from moderator.settings import KafkaSettings

__all__ = ["RawName", "RawProducer", "RawRecord", "python_writer", "send_raw"]

RawRecord = tuple[bytes | None, bytes | None, Sequence[tuple[bytes, bytes | None]]]
"""(key, value, headers), header names as raw bytes."""


class RawName(str):
    """A header name whose wire form is `raw`, whatever bytes those are."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode("utf-8", "backslashreplace"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def python_writer(compression: int = 0) -> Any:
    """aiokafka's pure-Python v2 batch writer: the one that encodes header names by calling
    their `encode()` (the C writer reads the `str` itself)."""
    return _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 26,
    )


async def send_raw(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Sequence[RawRecord],
    *,
    compression: int = 0,
) -> int:
    """Send `records` as one batch to `topic`/`partition`, compressed with Kafka codec
    `compression` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd); returns the first record's
    offset. `producer` must not be idempotent (the batch carries no producer id)."""
    batch = producer.create_batch()
    batch._builder = python_writer(compression)
    for key, value, headers in records:
        named = [(RawName(name), header_value) for name, header_value in headers]
        if batch.append(timestamp=None, key=key, value=value, headers=named) is None:
            raise ValueError("records do not fit one batch")
    metadata = await (await producer.send_batch(batch, topic, partition=partition))
    return int(metadata.offset)


class RawProducer(Producer):
    """A `Producer` that also sends raw batches (`send_batch`). Not idempotent, since raw
    batches carry no producer id; failures raise `PublishFailed`."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(settings, enable_idempotence=False)

    async def send_batch(
        self,
        topic: str,
        partition: int,
        records: Sequence[RawRecord],
        *,
        compression: int = 0,
    ) -> int:
        """`send_raw` through this producer; returns the first record's offset."""
        try:
            return await send_raw(
                self._producer, topic, partition, records, compression=compression
            )
        except KafkaError as exc:
            raise PublishFailed(f"{topic}: {type(exc).__name__}: {exc}") from exc
