"""Reading fetched record batches so that no record can stop the consumer.

aiokafka decodes header names as strict UTF-8 while a batch is iterated, inside
`AIOKafkaConsumer.getmany`, before any of our code sees the record. Kafka's brokers accept any
bytes there (Java clients decode them leniently), so one record from a non-Java producer with a
non-UTF-8 header name used to make every `getmany` raise, the whole fetch lost, and the
partition stalled. Worse, the records of the same batch handed out before it were skipped.

`LenientMemoryRecords` stands in for aiokafka's `MemoryRecords` in its fetcher
(`install()`; `moderator.kafka.consumer.make_consumer` calls it). Batches are still read by
aiokafka's fast reader; only when it fails part-way is the rest of that batch read here, from
the Kafka record-batch v2 layout, with header names decoded as UTF-8 with `surrogateescape` (the
original bytes stay recoverable) and a null header name read as "". Records yielded before
the failure are not yielded twice. A batch this reader cannot read either raises the
stand-in records (below) for the offsets it did not reach: the broker validated the batch,
so that is a broker or aiokafka fault, and it must not stall the partition.

A compressed batch is first decompressed here into a bounded buffer (`max_decompressed`): a
batch of 1 MB on the broker can hold gigabytes once inflated. One that does not fit is not
decompressed at all: each of its offsets comes out as a record with no key or value and one
header, `TOO_LARGE` (its value says why), which the service dead-letters as `too_large`.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import cramjam
import google_crc32c
from aiokafka import codec
from aiokafka.consumer import fetcher as _fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED",
    "TOO_LARGE",
    "UNREADABLE",
    "LenientMemoryRecords",
    "LenientRecord",
    "install",
    "read_batch",
]

# The header of a record standing in for one not read: its batch would inflate too far, or
# could not be parsed at all. The value says why.
TOO_LARGE = "x-moderator-too-large"
UNREADABLE = "x-moderator-unreadable"
DEFAULT_MAX_DECOMPRESSED = 64 * 1024 * 1024
_XERIAL = b"\x82SNAPPY\x00"

_HEADER = struct.Struct(">qiibIhiqqqhii")  # the 61-byte v2 batch header
_CRC = struct.Struct(">I")
_CRC_END = 21  # the CRC field ends here; it covers the batch from here (attributes) on
_CODEC_MASK = 0x07
_DECOMPRESS = {
    1: codec.gzip_decode,
    2: lambda data: codec.snappy_decode(bytes(data)),
    3: lambda data: codec.lz4_decode(bytes(data)),
    4: lambda data: codec.zstd_decode(bytes(data)),
}
# Errors aiokafka's reader raises on a record it cannot decode.
_READ_ERRORS = (UnicodeDecodeError, CorruptRecordException, ValueError, IndexError)


class LenientRecord:
    """One record read here; the attributes aiokafka's fetcher reads from its own records."""

    __slots__ = ("headers", "key", "offset", "timestamp", "timestamp_type", "value")

    checksum = None

    def __init__(
        self,
        offset: int,
        timestamp: int,
        timestamp_type: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
    ) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = timestamp_type
        self.key = key
        self.value = value
        self.headers = headers


def _varint(buffer: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A zig-zag varint (Kafka's encoding of lengths and deltas) at `pos`."""
    shift = 0
    raw = 0
    while True:
        if pos >= len(buffer):
            raise CorruptRecordException("record ends inside a varint")
        byte = buffer[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise CorruptRecordException("varint longer than 64 bits")


def _bytes(buffer: bytes | memoryview, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buffer, pos)
    if length < 0:
        return None, pos
    if pos + length > len(buffer):
        raise CorruptRecordException("record field runs past the batch")
    return bytes(buffer[pos : pos + length]), pos + length


def read_batch(raw: bytes | memoryview) -> Iterator[LenientRecord]:
    """Every record of one v2 record batch (`raw` starts at its base offset)."""
    if len(raw) < _HEADER.size:
        raise CorruptRecordException("record batch shorter than its header")
    (base_offset, _length, _epoch, magic, _crc, attributes, _last, base_ts, max_ts, *_rest) = (
        _HEADER.unpack_from(raw, 0)
    )
    count = _rest[-1]
    if magic != 2:
        raise CorruptRecordException(f"record batch magic {magic}: only v2 is read here")
    timestamp_type = (attributes >> 3) & 1
    body: bytes | memoryview = memoryview(raw)[_HEADER.size :]
    compression = attributes & _CODEC_MASK
    if compression:
        decompress = _DECOMPRESS.get(compression)
        if decompress is None:
            raise CorruptRecordException(f"unknown compression codec {compression}")
        body = decompress(body)
    pos = 0
    for _ in range(count):
        length, pos = _varint(body, pos)
        end = pos + length
        if length < 0 or end > len(body):
            raise CorruptRecordException("record length runs past the batch")
        pos += 1  # the record's attributes: unused by Kafka
        ts_delta, pos = _varint(body, pos)
        offset_delta, pos = _varint(body, pos)
        key, pos = _bytes(body, pos)
        value, pos = _bytes(body, pos)
        header_count, pos = _varint(body, pos)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(max(header_count, 0)):
            name, pos = _bytes(body, pos)
            header_value, pos = _bytes(body, pos)
            headers.append(((name or b"").decode("utf-8", "surrogateescape"), header_value))
        pos = end
        timestamp = max_ts if timestamp_type == 1 else base_ts + ts_delta
        yield LenientRecord(
            base_offset + offset_delta, timestamp, timestamp_type, key, value, headers
        )


def _snappy_size(data: bytes | memoryview) -> int:
    """Decompressed size of a snappy payload, raw or in xerial blocks, from its headers."""
    data = memoryview(data)
    if bytes(data[:8]) == _XERIAL:
        total, pos = 0, 16
        while pos + 4 <= len(data):
            (block,) = struct.unpack_from(">i", data, pos)
            total += _uvarint(data, pos + 4)
            pos += 4 + max(block, 0)
        return total
    return _uvarint(data, 0)


def _uvarint(data: memoryview, pos: int) -> int:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        pos += 1
        shift += 7
    raise CorruptRecordException("snappy length is not a varint")


def inflated_problem(raw: bytes | memoryview, limit: int) -> str | None:
    """Why a v2 batch's records cannot be decompressed within `limit` bytes, or None."""
    attributes = struct.unpack_from(">h", raw, 21)[0]
    compression = attributes & _CODEC_MASK
    body = memoryview(raw)[_HEADER.size :]
    too_large = f"the record batch decompresses to more than {limit} bytes"
    try:
        if compression == 1:
            inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header
            if len(inflater.decompress(body, limit + 1)) > limit or inflater.unconsumed_tail:
                return too_large
        elif compression == 2:
            if _snappy_size(body) > limit:
                return too_large
        elif compression in (3, 4):
            codec_module = cramjam.lz4 if compression == 3 else cramjam.zstd
            # An anonymous mapping: only the pages the output reaches become memory.
            with mmap.mmap(-1, limit) as scratch:
                codec_module.decompress_into(bytes(body), scratch)
    except cramjam.DecompressionError:
        return too_large  # it did not fit the buffer (or is not valid at all)
    except (zlib.error, CorruptRecordException, struct.error) as exc:
        return f"the record batch does not decompress: {exc}"
    return None


class _Batch:
    """aiokafka's batch with its records from `_records()`; every other attribute is the
    batch's own (the fetcher reads offsets, CRC and flags from it)."""

    def __init__(self, batch: Any) -> None:
        self._batch = batch
        self._iterator: Iterator[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._records()
        return next(self._iterator)

    def _records(self) -> Iterator[Any]:
        raise NotImplementedError


class _UnreadableBatch(_Batch):
    """Stand-in records, one per offset of a batch that is not read (`inflated_problem`)."""

    def __init__(self, batch: Any, why: str, *, marker: str = UNREADABLE) -> None:
        super().__init__(batch)
        self._marker = marker
        self._why = f"{why}; the record was not read, so its bytes are not here".encode()

    def _records(self) -> Iterator[LenientRecord]:
        return self.after(-1)

    def after(self, offset: int) -> Iterator[LenientRecord]:
        """Stand-ins for the batch's offsets past `offset`."""
        batch = self._batch
        first = max(batch.base_offset, offset + 1)
        for at in range(first, batch.base_offset + batch.last_offset_delta + 1):
            yield LenientRecord(
                at,
                batch.max_timestamp,
                batch.timestamp_type,
                None,
                None,
                [(self._marker, self._why)],
            )


class _LenientBatch(_Batch):
    """aiokafka's batch, iterated by its own reader until that fails, then by `read_batch`."""

    def __init__(self, batch: Any, raw: memoryview) -> None:
        super().__init__(batch)
        self._raw = raw

    def validate_crc(self) -> bool:
        """The batch's CRC-32C (over everything after the CRC field), in hardware where
        google-crc32c has its C build: ~30 µs per 400 KB batch, where aiokafka's own takes
        ~0.2-0.4 ms. aiokafka's fetcher calls this when the consumer checks CRCs."""
        if google_crc32c.implementation != "c" or len(self._raw) < _CRC_END + 2:
            return bool(self._batch.validate_crc())
        (expected,) = _CRC.unpack_from(self._raw, _CRC_END - 4)
        # It reads bytes only, not a view: one copy.
        return bool(google_crc32c.value(bytes(self._raw[_CRC_END:])) == expected)

    def _records(self) -> Iterator[Any]:
        last = -1
        try:
            for record in self._batch:
                last = record.offset
                yield record
            return
        except _READ_ERRORS as exc:
            failure = exc
        try:
            for record in read_batch(self._raw):
                if record.offset > last:
                    last = record.offset
                    yield record
        except (CorruptRecordException, ValueError, OSError, struct.error) as exc:
            why = f"the record batch could not be read ({type(failure).__name__}; {exc})"
            yield from _UnreadableBatch(self._batch, why).after(last)


class LenientMemoryRecords:
    """aiokafka's `MemoryRecords`, with v2 batches wrapped in `_LenientBatch`."""

    max_decompressed = DEFAULT_MAX_DECOMPRESSED

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._inner = MemoryRecords(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._inner.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._inner.has_next())

    def next_batch(self) -> Any:
        batch = self._inner.next_batch()
        if batch is None:
            return None
        start = self._pos
        (length,) = struct.unpack_from(">i", self._data, start + 8)
        self._pos = start + 12 + length
        if not isinstance(batch, DefaultRecordBatch):
            return batch  # a legacy (v0/v1) message set: aiokafka's reader alone
        raw = self._data[start : self._pos]
        if batch.compression_type and not batch.is_control_batch:
            why = inflated_problem(raw, self.max_decompressed)
            if why is not None:
                return _UnreadableBatch(batch, why, marker=TOO_LARGE)
        return _LenientBatch(batch, raw)


def install(max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> None:
    """Make aiokafka's fetcher read batches through `LenientMemoryRecords` (idempotent), with
    compressed batches bounded to `max_decompressed` bytes."""
    LenientMemoryRecords.max_decompressed = max_decompressed
    _fetcher.MemoryRecords = LenientMemoryRecords
