"""The memory budget: charges never wait, reservations wait for room."""

from __future__ import annotations

import asyncio

import pytest

from moderator.pipeline.budget import MemoryBudget


async def test_a_reservation_waits_until_released_bytes_make_room() -> None:
    budget = MemoryBudget(100)
    hold = asyncio.Event()
    entered = asyncio.Event()

    async def first() -> None:
        async with budget.reserve(60):
            await hold.wait()

    async def second() -> None:
        async with budget.reserve(30):
            entered.set()

    holder = asyncio.create_task(first())
    await asyncio.sleep(0)
    budget.charge(20)
    waiter = asyncio.create_task(second())
    await asyncio.sleep(0.01)
    assert not entered.is_set()  # 60 + 20 + 30 is over 100
    budget.release(20)
    await asyncio.wait_for(entered.wait(), 1)
    hold.set()
    await asyncio.gather(holder, waiter)
    assert budget.used == 0


async def test_charges_may_overshoot_and_spend_the_budget() -> None:
    budget = MemoryBudget(100)
    budget.charge(150)
    assert budget.spent
    budget.release(150)
    assert not budget.spent
    assert budget.used == 0


async def test_one_download_always_goes_however_much_is_charged() -> None:
    budget = MemoryBudget(100)
    budget.charge(90)  # the records of the events waiting to download
    async with budget.reserve(500):  # over the whole budget, and nothing else reserved
        assert budget.used == 590
        second = asyncio.create_task(_hold(budget, 10))
        await asyncio.sleep(0.01)
        assert not second.done()  # a second one waits for room
    await asyncio.wait_for(second, 1)
    assert budget.used == 90


async def _hold(budget: MemoryBudget, size: int) -> None:
    async with budget.reserve(size):
        await asyncio.sleep(0)


async def test_concurrent_reservations_never_exceed_the_budget() -> None:
    budget = MemoryBudget(100)
    peak = 0

    async def download(size: int) -> None:
        nonlocal peak
        async with budget.reserve(size):
            peak = max(peak, budget.used)
            await asyncio.sleep(0.001)

    await asyncio.gather(*(download(size) for size in [30, 40, 50, 20, 60, 10] * 5))
    assert peak <= 100
    assert budget.used == 0


def test_releasing_more_than_is_held_is_a_bug_not_a_clamp() -> None:
    budget = MemoryBudget(100)
    budget.charge(10)
    with pytest.raises(ValueError, match="releasing 20 bytes of 10"):
        budget.release(20)


def test_the_budget_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        MemoryBudget(0)
