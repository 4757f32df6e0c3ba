"""The event-loop lag watcher: on time it records ~0, a blocked loop shows as the block."""

from __future__ import annotations

import asyncio
import time

from moderator.service import loop_lag


async def test_a_blocked_loop_shows_as_lag_and_an_idle_one_does_not() -> None:
    lags: list[float] = []
    watching = asyncio.create_task(loop_lag.watch(lags.append, interval_s=0.02))
    await asyncio.sleep(0.1)  # several wake-ups on time
    on_time = list(lags)
    time.sleep(0.25)  # noqa: ASYNC251 - the point: a synchronous step holding the loop
    await asyncio.sleep(0.05)
    watching.cancel()
    assert len(on_time) >= 3
    assert max(on_time) < 0.05  # a 2-core CI machine may wake a little late
    assert all(lag >= 0 for lag in lags)
    assert max(lags) > 0.2  # the block, less at most one interval
