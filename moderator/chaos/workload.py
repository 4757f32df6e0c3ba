"""The events a fault scenario sends: unique ids, small shape images, a few known-bad ones.

Images are generated shapes (the demo model's world) at 64-96 px, JPEG-encoded: a few KB
each, so 20 000 events cost seconds to build and a few tens of MB on the broker, and the
service's work per event is decode + inference, not I/O. About 1 % of events are broken on
purpose, so the dead-letter path runs under faults too, and each event records the outcome
it must get: a verdict, or a DLQ record with a given reason.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable
from dataclasses import dataclass, field

import numpy as np

from moderator import kafka
from moderator.demo.shapes import combos, render
from moderator.errors import ConfigError, PublishFailed
from moderator.pipeline.events import json_event
from moderator.settings import KafkaSettings

VERDICT = "verdict"  # expected outcome of a good event; DLQ outcomes are "dlq:<reason>"
ANSWERED = "answered"  # expected outcome of a fuzz record: anything but an internal error
SIZES = (64, 96)  # image side range in px: cheap to encode, decode and embed
_JPEG_QUALITY = 85
BROKEN_EVERY = 100  # one event in this many is malformed on purpose
# A JPEG cut after its header: Pillow reads the header, then fails on the missing scan data.
_TRUNCATE_AT = 200
_SEND_ROUNDS = 5  # a send fails only after the client's own retries (request timeout, 40 s)
_RETRY_PAUSE_S = 2.0


@dataclass(frozen=True, slots=True)
class Event:
    """One input record and what the service must answer for it."""

    id: str
    value: bytes
    expect: str  # VERDICT or "dlq:<reason>"


@dataclass(slots=True)
class Workload:
    events: list[Event] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {e.id for e in self.events}

    @property
    def expected(self) -> dict[str, str]:
        return {e.id: e.expect for e in self.events}

    def add(self, event: Event) -> None:
        self.events.append(event)


def shape_jpeg(rng: np.random.Generator, index: int) -> bytes:
    """A shape image (cycling through every shape and colour) of random size, as JPEG."""
    all_combos = combos()
    shape, color = all_combos[index % len(all_combos)]
    size = int(rng.integers(SIZES[0], SIZES[1] + 1))
    buffer = io.BytesIO()
    render(shape, color, rng, size=size).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _broken(event_id: str, kind: int, good: bytes) -> Event:
    """One of three malformed events, each with the reason the service must give."""
    if kind == 0:
        cut = b'{"id": "' + event_id.encode() + b'", "image_b64": '  # JSON cut short
        return Event(event_id, cut, "dlq:invalid_event")
    if kind == 1:
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>'
        return Event(event_id, json_event(event_id, data=svg), "dlq:unsupported_format")
    return Event(event_id, json_event(event_id, data=good[:_TRUNCATE_AT]), "dlq:decode_error")


def inline_workload(
    n: int, run_id: str, seed: int, *, broken_every: int = BROKEN_EVERY
) -> Workload:
    """`n` JSON events with inline images; every `broken_every`-th one is malformed."""
    rng = np.random.default_rng(seed)
    work = Workload()
    for i in range(n):
        event_id = f"{run_id}-{i:06d}"
        image = shape_jpeg(rng, i)
        if broken_every and i % broken_every == broken_every - 1:
            work.add(_broken(event_id, (i // broken_every) % 3, image))
            continue
        # "upload": the surface the demo policy's decisions per shape are simplest for.
        work.add(Event(event_id, json_event(event_id, data=image, surface="upload"), VERDICT))
    return work


async def produce(
    settings: KafkaSettings, topic: str, events: list[Event], *, rate: float | None = None
) -> None:
    """Send every event (key = id) and wait for every ack, through moderator's own producer.

    With `rate`, events are spread at that many per second (a stream that lasts through the
    faults) instead of sent at once (a backlog).
    """
    producer = kafka.Producer(settings)
    await producer.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        todo = events
        for _ in range(_SEND_ROUNDS):
            pending = []
            for i, event in enumerate(todo):
                if rate is not None and (wait := start + i / rate - loop.time()) > 0:
                    await asyncio.sleep(wait)
                pending.append((event, await _send(producer, topic, event)))
            # A send that failed while the broker was away goes again, as any at-least-once
            # producer would; if a copy did land, the checker counts a duplicate.
            todo = [event for event, sent in pending if not await _acked(sent)]
            if not todo:
                return
            rate = None
            await asyncio.sleep(_RETRY_PAUSE_S)
        raise ConfigError(f"{len(todo)} events could not be produced to {topic}")
    finally:
        await producer.stop()


async def _send(producer: kafka.Producer, topic: str, event: Event) -> Awaitable[None] | None:
    try:
        return await producer.send(topic, event.value, key=event.id.encode())
    except PublishFailed:
        return None


async def _acked(sent: Awaitable[None] | None) -> bool:
    if sent is None:
        return False
    try:
        await sent
    except PublishFailed:
        return False
    return True
