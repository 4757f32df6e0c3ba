"""A decode process that dies is replaced; the event it held is retried alone, then refused."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import struct
from collections.abc import AsyncIterator
from functools import partial
from multiprocessing.queues import SimpleQueue
from pathlib import Path

import pytest

from moderator.errors import DecodeCrashed
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.pool import DecodePool

_SPEC = PreprocessSpec(image_size=32, resize_shortest_edge=32)


def _die_if(marker: str, value: int) -> int:
    """Kill this decode process when `marker` exists (a poison image), else echo `value`."""
    if Path(marker).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def _die_mid_send(value: int) -> int:
    """Die as a worker the OOM killer takes while it sends a result: the result pipe's lock
    held, half a message written."""
    for queue in gc.get_objects():
        if isinstance(queue, SimpleQueue) and queue._wlock is not None:
            queue._wlock.acquire()
            queue._writer._send(struct.pack("!i", 1_000_000) + b"partial")  # type: ignore[attr-defined]
    os.kill(os.getpid(), signal.SIGKILL)
    return value


def _slow(value: int) -> int:
    import time

    time.sleep(0.3)
    return value


@pytest.fixture
def replaced() -> list[str]:
    return []


@pytest.fixture
async def pool(replaced: list[str]) -> AsyncIterator[DecodePool]:
    decode_pool = DecodePool(2, _SPEC, on_replaced=replaced.append)
    await decode_pool.start()
    yield decode_pool
    await decode_pool.close()


async def test_an_image_that_kills_its_process_is_decode_crashed_and_the_pool_serves_on(
    pool: DecodePool, replaced: list[str], tmp_path: Path
) -> None:
    poison = tmp_path / "poison"
    poison.touch()
    innocent = asyncio.ensure_future(pool.run(_slow, 7))  # in the pool when it breaks
    await asyncio.sleep(0.05)
    with pytest.raises(DecodeCrashed):
        await pool.run(_die_if, str(poison), 1)
    assert await innocent == 7  # retried alone, and answered
    assert replaced == ["main", "quarantine"]
    poison.unlink()
    assert await asyncio.gather(*(pool.run(_die_if, str(poison), i) for i in range(6))) == list(
        range(6)
    )


async def test_a_process_killed_from_outside_costs_no_event(
    pool: DecodePool, replaced: list[str]
) -> None:
    running = [asyncio.ensure_future(pool.run(_slow, i)) for i in range(4)]
    await asyncio.sleep(0.1)
    os.kill(pool.pids()[0], signal.SIGKILL)
    assert await asyncio.gather(*running) == list(range(4))
    assert replaced == ["main"]
    assert len(pool.pids()) == 2


async def test_a_retry_process_killed_while_idle_is_replaced_before_the_next_retry(
    pool: DecodePool, replaced: list[str], tmp_path: Path
) -> None:
    poison = tmp_path / "poison"
    poison.touch()
    with pytest.raises(DecodeCrashed):  # starts the retry pool, then replaces it
        await pool.run(_die_if, str(poison), 1)
    poison.unlink()
    assert await pool.run(_die_if, str(poison), 2) == 2
    assert await pool._retry_alone(partial(_slow, 3)) == 3  # the retry pool is up again
    (idle,) = pool.quarantine_pids()
    os.kill(idle, signal.SIGKILL)  # from outside, while it decodes nothing
    await asyncio.sleep(0.3)  # the executor notices its dead process
    innocent = asyncio.ensure_future(pool.run(_slow, 4))  # in the main pool when it breaks
    await asyncio.sleep(0.05)
    os.kill(pool.pids()[0], signal.SIGKILL)
    os.kill(pool.pids()[1], signal.SIGKILL)
    assert await innocent == 4  # retried alone in a fresh retry pool, not dead-lettered
    assert replaced.count("quarantine") == 2
    assert idle not in pool.quarantine_pids()


@pytest.mark.parametrize("poison_first", [True, False])
async def test_innocent_events_are_never_dead_lettered_with_the_poison(
    pool: DecodePool, tmp_path: Path, poison_first: bool
) -> None:
    poison = tmp_path / "poison"
    poison.touch()
    innocent = [pool.run(_slow, i) for i in range(6)]
    deadly = pool.run(_die_if, str(poison), -1)
    calls = [deadly, *innocent] if poison_first else [*innocent, deadly]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    results = dict(zip([-1, *range(6)] if poison_first else [*range(6), -1], outcomes, strict=True))
    assert isinstance(results.pop(-1), DecodeCrashed)
    assert results == {i: i for i in range(6)}


async def test_an_event_cancelled_before_a_death_strands_no_other(pool: DecodePool) -> None:
    queued = [asyncio.ensure_future(pool.run(_slow, i)) for i in range(8)]
    await asyncio.sleep(0.05)
    queued[5].cancel()
    os.kill(pool.pids()[0], signal.SIGKILL)
    outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 30)
    assert isinstance(outcomes[5], asyncio.CancelledError)
    assert [o for i, o in enumerate(outcomes) if i != 5] == [0, 1, 2, 3, 4, 6, 7]


async def test_a_process_killed_mid_send_does_not_wedge_the_pool(
    pool: DecodePool, replaced: list[str]
) -> None:
    innocent = asyncio.ensure_future(pool.run(_slow, 5))
    await asyncio.sleep(0.05)
    with pytest.raises(DecodeCrashed):  # it dies the same way on its retry
        await asyncio.wait_for(pool.run(_die_mid_send, 1), 30)
    assert await asyncio.wait_for(innocent, 30) == 5
    assert replaced == ["main", "quarantine"]
    assert await asyncio.wait_for(asyncio.gather(*(pool.run(_slow, i) for i in range(3))), 30) == [
        0,
        1,
        2,
    ]
