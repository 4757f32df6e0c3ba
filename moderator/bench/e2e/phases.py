"""A phase of `bench e2e` and how it is timed: at max load (preloaded events, from ready to
the N-th answer) and at half load (events produced at a rate while the system runs; latency
per event from its send to its answer)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from moderator.bench.e2e.answers import Collector
from moderator.bench.e2e.load import Pool, run_producers
from moderator.bench.e2e.measures import (
    batch_stages,
    latency_by_second,
    loop_lag,
    scrape,
    slow_event_stages,
)
from moderator.bench.e2e.options import (
    READY_TIMEOUT_S,
    WARMUP_FRACTION,
    WARMUP_MAX_S,
    E2EOptions,
    Progress,
    percentile,
)
from moderator.bench.e2e.usage import (
    GpuBusy,
    Watch,
    cpu_report,
    stage_budget,
    stage_seconds,
)
from moderator.harness.fleet import Fleet

Start = Callable[[], Awaitable[Fleet]]
"""Starts the system under test on the phase's topics."""


@dataclass
class Phase:
    system: str
    load: str
    events: int
    answered: int
    seconds: float
    complete: bool
    dead: int = 0
    offered_rate: float | None = None
    input_rate: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    first_answer_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "system": self.system,
            "load": self.load,
            "events": self.events,
            "answered": self.answered,
            "dlq": self.dead,
            "seconds": round(self.seconds, 3),
            "verdicts_s": self.rate,
            "offered_s": self.offered_rate,
            "input_s": self.input_rate,
            "p50_ms": percentile(lat, 50),
            "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None,
            "latency_samples": len(lat),
            "first_answer_s": self.first_answer_s,
            "complete": self.complete,
            **self.extra,
        }


class Usage:
    """CPU by group and stage, and GPU busy %, over one phase of one system (`usage`)."""

    def __init__(self, watch: Watch, system: Fleet) -> None:
        self._meter = watch.meter(lambda: [r.pid for r in system.replicas])
        self._urls = system.urls("/metrics")
        self._gpu = GpuBusy(watch.gpus)
        self._before = self._meter.snapshot()
        self._stages: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        # The GPU sampler first (NVML takes a while to start); then the stage counters and
        # /proc back to back, in the reverse order of `stop`, so both cover the same window.
        self._gpu.start()
        self._stages = stage_seconds(await scrape(self._urls))
        self._before = self._meter.snapshot()

    async def stop(self, events: int) -> dict[str, Any]:
        after = self._meter.snapshot()
        stages = stage_seconds(await scrape(self._urls))
        gpu = self._gpu.stop()
        cpu = cpu_report(self._before, after, events)
        out: dict[str, Any] = {"cpu_ms_per_event": cpu}
        if stages:  # ours: the service counts its stages
            out["stage_cpu_us_per_event"] = stage_budget(self._stages, stages, cpu)
        if self._gpu.wanted:
            out |= gpu
        return out

    @property
    def since(self) -> float:
        return self._before.at


async def max_phase(
    name: str,
    start: Start,
    collector: Collector,
    events: int,
    limit_s: float,
    progress: Progress,
    watch: Watch,
) -> tuple[Phase, Fleet]:
    """Start the system on the preloaded topic, time it from ready to the N-th answer."""
    await collector.start()
    system = await start()
    try:
        # The clock starts when the first replica is ready: the others still loading count
        # against the rate, never work done before the clock (a conservative figure).
        t0, all_ready = await system.wait_ready(READY_TIMEOUT_S)
        usage = Usage(watch, system)
        await usage.start()
        progress(f"{name}: ready; consuming {events} preloaded events")
        deadline = t0 + limit_s
        complete = False
        while time.monotonic() < deadline:
            system.check_alive()
            if await collector.wait_for(events, min(deadline, time.monotonic() + 1.0)):
                complete = True
                break
        t1 = max(collector.arrived.values(), default=time.monotonic()) if complete else None
        # From all replicas ready: the answers since then, and the CPU they took.
        counted = sum(1 for t in collector.arrived.values() if t > usage.since)
        used = await usage.stop(counted)
        elapsed = (t1 or time.monotonic()) - t0
        first = min(collector.arrived.values(), default=None)
        phase = Phase(
            name,
            "max",
            events,
            min(len(collector.answered), events),
            elapsed,
            complete,
            dead=collector.dead,
            first_answer_s=None if first is None else first - t0,
            extra=used,
        )
        if len(system.replicas) > 1:
            phase.extra["all_ready_after_s"] = round(all_ready - t0, 3)
            phase.extra["verdicts_s_all_ready"] = rate_since(collector.arrived, all_ready, t1)
        if name == "ours" and len(system.replicas) == 1:
            # What one event costs the event loop, the part of the work no extra decode
            # worker or GPU can take over (`usage` has it for any number of replicas).
            phase.extra["loop_cpu_ms_per_event"] = used["cpu_ms_per_event"]["service_loop_ms"]
    except BaseException:
        await system.stop()
        raise
    return phase, system


def rate_since(arrived: dict[str, float], since: float, until: float | None) -> float | None:
    """Answers per second from `since` (the last replica ready) to `until` (the N-th answer).

    Why: replicas that finish loading after the clock starts make the group rebalance, and
    consumption pauses while it does; this figure leaves that start-up out. None when the run
    did not complete or less than a second of it came after `since`.
    """
    if until is None or until - since < 1.0:
        return None
    return sum(1 for t in arrived.values() if since < t <= until) / (until - since)


async def half_phase(
    name: str,
    start: Start,
    collector: Collector,
    opts: E2EOptions,
    pool: Pool,
    topic: str,
    rate: float,
    progress: Progress,
    watch: Watch,
) -> Phase:
    await collector.start()
    system = await start()
    try:
        await system.wait_ready(READY_TIMEOUT_S)
        usage = Usage(watch, system)
        await usage.start()
        progress(f"{name}: producing {rate:.1f} events/s for {opts.duration:.0f} s")
        produced = await asyncio.to_thread(
            run_producers,
            opts.broker,
            topic,
            pool,
            f"half-{uuid.uuid4().hex[:6]}",
            workers=opts.producers,
            rate=rate,
            duration=opts.duration,
        )
        deadline = time.monotonic() + max(60.0, opts.duration)
        complete = await collector.wait_for(len(produced.ids), deadline)
        system.check_alive()
        used = await usage.stop(sum(1 for t in collector.arrived.values() if t > usage.since))
        metrics = await scrape(system.urls("/metrics"))
    finally:
        await system.stop()
    sent = dict(zip(produced.ids, produced.timestamps_ms, strict=True))
    begin = min(produced.timestamps_ms, default=0)
    skip_ms = 1000 * min(WARMUP_MAX_S, WARMUP_FRACTION * opts.duration)
    latency_by_id = {
        i: float(collector.answered[i] - ts)
        for i, ts in sent.items()
        if i in collector.answered and ts >= begin + skip_ms
    }
    latencies = list(latency_by_id.values())
    return Phase(
        name,
        "half",
        len(produced.ids),
        sum(1 for i in sent if i in collector.answered),
        produced.seconds,
        complete,
        dead=collector.dead,
        offered_rate=rate,
        input_rate=len(produced.ids) / produced.seconds if produced.seconds else None,
        latencies_ms=latencies,
        extra=used
        | slow_event_stages(latency_by_id, collector.timings_by_id)
        | batch_stages(metrics)
        | loop_lag(metrics)
        | latency_by_second(sent, collector.answered),
    )
