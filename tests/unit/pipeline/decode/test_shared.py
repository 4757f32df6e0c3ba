"""Shared-memory slots for the bytes sent to decode processes: lent, read, and returned only
when the trip is over, whatever became of the event or the process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moderator.errors import DecodeCrashed
from moderator.pipeline.decode import shared
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.pool import DecodePool
from moderator.pipeline.decode.shared import Arena, SlotRef, payload

_SPEC = PreprocessSpec(image_size=32, resize_shortest_edge=32)


@pytest.fixture
def arena() -> Iterator[Arena]:
    made = Arena.create(4, 4096)
    assert made is not None
    yield made
    made.close()


def test_bytes_lent_to_a_slot_read_back_exactly(arena: Arena) -> None:
    ref = arena.lend(b"\x00abc\xff" * 10)
    assert ref is not None
    assert payload(ref) == b"\x00abc\xff" * 10
    assert payload(b"plain") == b"plain"  # what came through the pipe
    arena.give_back(ref)
    assert arena.free == 4


def test_too_large_or_no_free_slot_means_the_pipe(arena: Arena) -> None:
    assert arena.lend(bytes(4097)) is None
    refs = [arena.lend(bytes([i]) * 100) for i in range(4)]
    assert all(r is not None for r in refs)
    assert arena.lend(b"x") is None  # every slot out
    assert [payload(r) for r in refs if r] == [bytes([i]) * 100 for i in range(4)]
    for ref in refs:
        assert ref is not None
        arena.give_back(ref)
    with pytest.raises(ValueError, match="not out on loan"):
        arena.give_back(refs[0])  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=4096), min_size=1, max_size=8))
def test_slots_never_overlap(blobs: list[bytes]) -> None:
    arena = Arena.create(8, 4096)
    assert arena is not None
    try:
        refs = [arena.lend(blob) for blob in blobs]
        assert [payload(r) for r in refs if r is not None] == blobs
    finally:
        arena.close()


def test_no_room_in_dev_shm_is_no_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(shared.os, "statvfs", lambda path: Full())
    assert Arena.create(4, 1 << 20) is None
    assert Arena.create(0, 1 << 20) is None  # decode_shared_mib 0: pipes only


def test_closing_removes_the_segment() -> None:
    arena = Arena.create(1, 4096)
    assert arena is not None
    ref = arena.lend(b"x")
    assert ref is not None
    arena.close()
    assert not Path(f"/dev/shm/{ref.segment}").exists()


def _echo(data: bytes | SlotRef, tag: str) -> tuple[str, bytes, bool]:
    return tag, payload(data), isinstance(data, SlotRef)


def _slow_echo(data: bytes | SlotRef) -> bytes:
    time.sleep(0.3)
    return payload(data)


def _die(data: bytes | SlotRef) -> bytes:
    os.kill(os.getpid(), signal.SIGKILL)
    return b""


@pytest.fixture
async def pool() -> AsyncIterator[DecodePool]:
    decode_pool = DecodePool(2, _SPEC)
    decode_pool.attach(Arena.create(2, 4096))
    await decode_pool.start()
    yield decode_pool
    await decode_pool.close()


async def test_trips_go_through_slots_and_every_slot_comes_back(pool: DecodePool) -> None:
    blobs = [os.urandom(3000) for _ in range(6)] + [os.urandom(5000)]  # the last: too large
    answers = await asyncio.gather(*(pool.run_bytes(_echo, b, str(i)) for i, b in enumerate(blobs)))
    assert [a[1] for a in answers] == blobs
    assert [a[0] for a in answers] == [str(i) for i in range(len(blobs))]
    assert answers[0][2]
    assert not answers[-1][2]
    assert pool._arena is not None
    assert pool._arena.free == 2


async def test_a_cancelled_event_keeps_its_slot_until_the_worker_is_done(pool: DecodePool) -> None:
    arena = pool._arena
    assert arena is not None
    task = asyncio.ensure_future(pool.run_bytes(_slow_echo, b"held"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert arena.free == 1  # the worker may still be reading it
    for _ in range(100):
        await asyncio.sleep(0.01)
        if arena.free == 2:
            break
    assert arena.free == 2


async def test_a_slot_comes_back_when_its_process_dies(pool: DecodePool) -> None:
    with pytest.raises(DecodeCrashed):
        await pool.run_bytes(_die, b"poison")
    assert pool._arena is not None
    assert pool._arena.free == 2
    assert await pool.run_bytes(_slow_echo, b"after") == b"after"
