"""How late the event loop runs what is due: the service's responsiveness as one number.

Why: the loop fetches, routes and publishes every event, and hands each batch between the
batcher's stage threads. A long synchronous step on it, or a thread holding the GIL, delays
all of that at once and shows in no single stage's timing. With GPU decoding, events have
waited hundreds of ms in the batcher's queue while no stage was that slow (four replicas
on one H200, `bench e2e`); this says whether the loop itself was late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

__all__ = ["INTERVAL_S", "watch"]

INTERVAL_S: Final = 0.1  # ten wake-ups a second: nothing next to a loop moving events


async def watch(record: Callable[[float], None], interval_s: float = INTERVAL_S) -> None:
    """Sleep `interval_s` again and again, and `record` how many seconds past its due time
    each wake-up came (0 for a loop on time). Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        record(max(0.0, loop.time() - due))
