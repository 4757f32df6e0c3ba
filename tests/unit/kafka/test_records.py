"""Fetched batches whose records aiokafka's reader refuses are still read, record by record."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from moderator.kafka import records as kafka_records
from moderator.kafka.raw import RawName, python_writer
from moderator.kafka.records import TOO_LARGE, UNREADABLE, LenientMemoryRecords, read_batch

Record = tuple[bytes | None, bytes | None, list[tuple[bytes, bytes | None]]]


def _batch(base_offset: int, records: list[Record], compression: int = 0) -> bytes:
    builder = python_writer(compression)
    for delta, (key, value, headers) in enumerate(records):
        named = [(RawName(name), header_value) for name, header_value in headers]
        builder.append(
            delta, timestamp=1_700_000_000_000 + delta, key=key, value=value, headers=named
        )
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base_offset)  # the broker assigns offsets; so does the test
    return bytes(raw)


def _read_all(
    data: bytes,
) -> list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    records = LenientMemoryRecords(data)
    out = []
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc()
        out += [(r.offset, r.key, r.value, list(r.headers)) for r in batch]
    return out


def test_a_non_utf8_header_name_does_not_hide_its_batch() -> None:
    good = [(b"a", b"1")]
    data = _batch(
        10, [(b"k0", b"v0", good), (b"k1", b"v1", [(b"\xff\xfe", None)]), (b"k2", b"v2", good)]
    )
    data += _batch(13, [(None, b"v3", [])])
    read = _read_all(data)
    assert [r[0] for r in read] == [10, 11, 12, 13]  # nothing skipped, nothing twice
    assert read[1][3] == [("\udcff\udcfe", None)]
    assert read[1][3][0][0].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert read[2][1:] == (b"k2", b"v2", [("a", b"1")])
    assert read[3][1] is None


def test_aiokafkas_reader_alone_fails_on_the_same_batch() -> None:
    """The premise: without this module the record stops the consumer."""
    from aiokafka.record.memory_records import MemoryRecords

    records = MemoryRecords(_batch(0, [(b"k", b"v", [(b"\x80", b"x")])]))
    batch = records.next_batch()
    assert batch is not None
    with pytest.raises((UnicodeDecodeError, CorruptRecordException)):
        list(batch)


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_read_too(codec: int) -> None:
    records = [(b"k%d" % i, b"x" * 5000, [(b"\xc3\x28", b"v")]) for i in range(3)]
    data = _batch(0, records, compression=codec)
    assert data[21 + 1] & 0x07 == codec  # the batch really is compressed (attributes, low byte)
    read = _read_all(data)
    assert [(r[0], r[2]) for r in read] == [(i, b"x" * 5000) for i in range(3)]


def test_a_batch_truncated_inside_a_record_is_refused() -> None:
    data = _batch(0, [(b"k", b"v" * 100, [])])
    with pytest.raises(CorruptRecordException):
        list(read_batch(data[:-50]))


def test_install_replaces_the_fetchers_reader() -> None:
    kafka_records.install()
    assert fetcher.MemoryRecords is LenientMemoryRecords


_names = st.binary(max_size=40)
_values = st.none() | st.binary(max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.none() | st.binary(max_size=30),
            _values,
            st.lists(st.tuples(_names, _values), max_size=4),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_header_bytes_come_back_exactly(records: list[Record]) -> None:
    read = _read_all(_batch(100, records))
    assert [r[0] for r in read] == list(range(100, 100 + len(records)))
    for (key, value, headers), (_offset, got_key, got_value, got_headers) in zip(
        records, read, strict=True
    ):
        assert (got_key, got_value) == (key, value)
        assert [(n.encode("utf-8", "surrogateescape"), v) for n, v in got_headers] == headers


@pytest.fixture
def small_inflate_bound() -> Iterator[int]:
    kafka_records.install(max_decompressed=1024 * 1024)
    yield 1024 * 1024
    kafka_records.install()


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_a_batch_inflating_past_the_bound_is_not_decompressed(
    codec: int, small_inflate_bound: int
) -> None:
    bomb = [(b"k%d" % i, b"\0" * (600 * 1024), []) for i in range(3)]  # 1.8 MB of zeros
    data = _batch(40, bomb, compression=codec) + _batch(43, [(b"next", b"ok", [])], codec)
    assert len(data) < small_inflate_bound // 10  # small on the wire
    read = _read_all(data)
    assert [r[0] for r in read] == [40, 41, 42, 43]
    for _offset, key, value, headers in read[:3]:
        assert (key, value) == (None, None)
        ((name, why),) = headers
        assert name == TOO_LARGE
        assert why is not None
        assert f"more than {small_inflate_bound} bytes".encode() in why
    assert read[3][1:3] == (b"next", b"ok")  # the batch after it is read as usual


def test_a_batch_within_the_bound_is_read_whole(small_inflate_bound: int) -> None:
    records = [(b"k", b"\0" * (900 * 1024), [])]
    (record,) = _read_all(_batch(0, records, compression=4))
    assert record[2] == b"\0" * (900 * 1024)


def test_a_batch_neither_reader_can_read_yields_stand_ins_not_an_error() -> None:
    records = [(b"k0", b"v0", []), (b"k1", b"v1", [(b"\xff", b"x")]), (b"k2", b"v2", [])]
    raw = bytearray(_batch(20, records))
    struct.pack_into(">i", raw, 57, 4)  # one record more than the batch holds
    struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))  # and a CRC that agrees
    read = _read_all(bytes(raw))
    assert [r[0] for r in read] == [20, 21, 22]  # no offset skipped, none twice
    assert [r[1] for r in read] == [b"k0", b"k1", b"k2"]  # every record there was
    # A fourth record the header promised and the batch does not hold: nothing to stand in for
    # past the batch's last offset.


def test_records_neither_reader_can_read_become_stand_ins_not_an_error() -> None:
    records = [(b"k0", b"v0", []), (b"k1", b"v1", [(b"\xff", b"x")]), (b"k2", b"v2", [])]
    raw = bytearray(_batch(30, records))
    at = raw.index(b"\x04v2")  # the last record's value length (zig-zag 2)...
    raw[at] = 0x7E  # ...now 63: past the end of the batch
    struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    read = _read_all(bytes(raw))
    assert [r[0] for r in read] == [30, 31, 32]
    assert [r[1] for r in read[:2]] == [b"k0", b"k1"]  # aiokafka's, then ours
    _offset, key, value, headers = read[2]
    assert (key, value) == (None, None)
    ((name, why),) = headers
    assert name == UNREADABLE
    assert why is not None
    assert b"could not be read" in why


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.none(), st.binary(max_size=3000), st.just([])), min_size=1, max_size=4),
    st.integers(min_value=0),
    st.integers(min_value=1, max_value=255),
)
def test_the_hardware_crc_agrees_with_aiokafkas_on_good_and_damaged_batches(
    records: list[Record], where: int, flip: int
) -> None:
    """The fetcher calls `validate_crc` on every batch: a false pass delivers corrupt records,
    a false failure stalls the partition."""
    good = _batch(0, records)
    damaged = bytearray(good)
    damaged[21 + where % (len(good) - 21)] ^= flip  # anywhere the CRC covers
    for data, intact in ((good, True), (bytes(damaged), False)):
        batch = LenientMemoryRecords(data).next_batch()
        assert batch.validate_crc() is intact
        assert batch.validate_crc() == batch._batch.validate_crc()  # aiokafka's own reader
