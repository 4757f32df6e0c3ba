"""The load generator: events built from a pool of pre-encoded images, sent by processes of
their own, either N as fast as possible (a preload) or at a rate for a while."""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import time
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from moderator import kafka
from moderator.bench.e2e.options import SURFACE
from moderator.pipeline.events import cloudevent_headers
from moderator.settings import KafkaSettings

_SEND_TICK_S: Final = 0.002  # rate-limited producers send what is due every tick


@dataclass(frozen=True)
class Pool:
    """Pre-encoded pieces of events, so an event costs one concatenation to build.

    Inline images go as JSON with base64 (`encoding="json"`) or as binary-mode CloudEvents:
    the image bytes as the value, the attributes as `ce_*` headers (`"binary"`). URL events
    are JSON either way."""

    images: list[bytes]  # each image's bytes
    content_types: list[str]  # image/jpeg, image/png
    urls: list[bytes]  # its URL on the local image server ([] without one)
    url_fraction: float
    encoding: str = "json"
    inline: list[bytes] = field(init=False)  # base64 of each image, for JSON events

    def __post_init__(self) -> None:
        encoded = [base64.b64encode(i) for i in self.images] if self.encoding == "json" else []
        object.__setattr__(self, "inline", encoded)

    def event(self, index: int, event_id: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        """(value, headers) of event `index`."""
        k = index % len(self.images)
        head = b'{"id":"' + event_id.encode() + b'","surface":"' + SURFACE.encode() + b'",'
        if self.urls and (index % 100) < round(self.url_fraction * 100):
            return head + b'"image_url":"' + self.urls[k] + b'"}', []
        if self.encoding == "binary":
            return self.images[k], cloudevent_headers(event_id, self.content_types[k], SURFACE)
        return head + b'"image_b64":"' + self.inline[k] + b'"}', []


@dataclass(frozen=True)
class _ProduceJob:
    bootstrap: str
    topic: str
    pool: Pool
    prefix: str
    count: int | None  # preload: exactly this many, as fast as possible
    rate: float | None  # else: this many per second …
    duration: float | None  # … for this long
    start_at: float  # wall-clock time all producers begin at


@dataclass(frozen=True)
class Produced:
    ids: list[str]
    timestamps_ms: list[int]  # when each was sent (wall clock)
    seconds: float


def _produce_worker(job: _ProduceJob) -> Produced:
    return asyncio.run(_produce(job))


async def _produce(job: _ProduceJob) -> Produced:
    # acks=1 (so no idempotence): the generator's own durability is not what is measured.
    settings = KafkaSettings(bootstrap_servers=job.bootstrap, idempotent_producer=False)
    producer = kafka.Producer(settings, acks=1, linger_ms=1, max_batch_size=1024 * 1024)
    await producer.start()
    ids: list[str] = []
    stamps: list[int] = []
    acks: list[Awaitable[None]] = []
    try:
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
        started = time.monotonic()

        async def send(i: int) -> None:
            event_id = f"{job.prefix}-{i}"
            now_ms = int(time.time() * 1000)
            value, headers = job.pool.event(i, event_id)
            acks.append(
                await producer.send(
                    job.topic, value, key=event_id.encode(), headers=headers, timestamp_ms=now_ms
                )
            )
            ids.append(event_id)
            stamps.append(now_ms)

        if job.count is not None:
            for i in range(job.count):
                await send(i)
        else:
            assert job.rate is not None
            assert job.duration is not None
            i = 0
            while (elapsed := time.monotonic() - started) < job.duration:
                due = int(elapsed * job.rate)
                while i < due:
                    await send(i)
                    i += 1
                await asyncio.sleep(_SEND_TICK_S)
        for ack in acks:  # in turn, not gathered: no task per event
            await ack
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
    return Produced(ids, stamps, seconds)


def run_producers(
    bootstrap: str,
    topic: str,
    pool: Pool,
    tag: str,
    *,
    workers: int,
    count: int | None = None,
    rate: float | None = None,
    duration: float | None = None,
) -> Produced:
    """Split the work over `workers` processes (spawned: no inherited threads or loops)."""
    start_at = time.time() + 2.0 + 0.5 * workers  # every process imported and connected
    jobs = []
    for w in range(workers):
        share = None if count is None else count // workers + (1 if w < count % workers else 0)
        jobs.append(
            _ProduceJob(
                bootstrap,
                topic,
                pool,
                f"{tag}-{w}",
                share,
                None if rate is None else rate / workers,
                duration,
                start_at,
            )
        )
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        results = list(ex.map(_produce_worker, jobs))
    return Produced(
        [i for r in results for i in r.ids],
        [t for r in results for t in r.timestamps_ms],
        max(r.seconds for r in results),
    )
