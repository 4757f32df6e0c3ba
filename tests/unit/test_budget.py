"""The memory budget: charges never wait, reservations wait for room."""

from __future__ import annotations

import asyncio

import pytest

from moderator.budget import MemoryBudget


async def test_a_reservation_waits_until_released_bytes_make_room() -> None:
    budget = MemoryBudget(100)
    budget.charge(80)
    entered = asyncio.Event()

    async def download() -> None:
        async with budget.reserve(50):
            entered.set()

    task = asyncio.create_task(download())
    await asyncio.sleep(0.01)
    assert not entered.is_set()
    budget.release(40)
    await asyncio.wait_for(entered.wait(), 1)
    await task
    assert budget.used == 40


async def test_charges_may_overshoot_and_spend_the_budget() -> None:
    budget = MemoryBudget(100)
    budget.charge(150)
    assert budget.spent
    budget.release(150)
    assert not budget.spent
    assert budget.used == 0


async def test_a_request_larger_than_the_budget_goes_alone() -> None:
    budget = MemoryBudget(100)
    async with budget.reserve(500):
        assert budget.used == 500
    assert budget.used == 0


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


def test_the_budget_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        MemoryBudget(0)
