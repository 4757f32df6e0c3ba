"""The fault scenarios: each sends a workload, runs `moderator serve`, injects faults, tallies.

Every scenario gets fresh topics (input 6 partitions, verdicts 3, DLQ 1) and its own group,
on a private stack (`moderator.harness.stack`), so scenarios never see each other's records.
Faults are timed by progress (answered ids), not by the clock, so they land mid-run on fast
and slow machines alike. What each scenario promises, and how it is measured:

* kill       SIGKILL the only replica at `kills` random moments, restart it at once.
* broker     stop the broker cleanly, restart it; later SIGKILL it, restart it.
* redis      stop Redis, start it again; later freeze it (SIGSTOP) and thaw it.
* rebalance  scale 1 → 3 → 1 replicas in one group while events stream in.
* slow-fetch a share of events name URLs on a black-holing or trickling server: those must
             reach the DLQ as `fetch_failed` after bounded retries while the rest keeps
             flowing; the longest gap between answers must stay under the fetch deadline.

Target everywhere: 0 lost, duplicates bounded by what was uncommitted at each fault, and
every duplicate carrying the same decision (or DLQ reason) as the first copy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moderator.chaos.checker import Checker, Tally
from moderator.chaos.workload import VERDICT, Event, Workload, inline_workload, produce
from moderator.harness.fleet import Fleet, kafka_env
from moderator.harness.imageserver import ImageServer
from moderator.harness.stack import Stack
from moderator.harness.topics import Topics
from moderator.pipeline.acquire.fetch import FetchPolicy
from moderator.pipeline.events import json_event
from moderator.settings import KafkaSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
# Service settings every scenario shares. In-flight and poll sizes are set (not left at the
# defaults) because they bound the duplicates one fault can cause; see duplicate_bound().
MAX_IN_FLIGHT = 256
MAX_POLL_RECORDS = 100
SESSION_TIMEOUT_MS = 10_000  # a SIGKILLed member's partitions wait this long for a new owner
FETCH_TIMEOUT_S = 1.0
FETCH_RETRIES = 1
SETTLE_S = 3.0  # after the last id is answered, how long to wait for late duplicates
INPUT_PARTITIONS = 6
_BREAKER_S = 5.0  # moderator.cache.redis's retry_after_s: how long a failed Redis is left alone


def serve_env(
    bootstrap: str, redis_url: str, topics: dict[str, str], group: str, **extra: str
) -> dict[str, str]:
    """The MODERATOR_* environment of a scenario's `moderator serve` replicas."""
    env = kafka_env(bootstrap, topics, group) | {
        "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "MODERATOR_KAFKA__MAX_POLL_RECORDS": str(MAX_POLL_RECORDS),
        "MODERATOR_REDIS__URL": redis_url,
        "MODERATOR_MODEL__PATH": "demo",
        "MODERATOR_MODEL__PROVIDERS": '["cpu"]',
        "MODERATOR_POLICY__PATH": str(REPO_ROOT / "policies" / "demo.yaml"),
        "MODERATOR_PIPELINE__DECODE_WORKERS": "1",
        "MODERATOR_PIPELINE__MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "MODERATOR_PIPELINE__FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
        "MODERATOR_PIPELINE__FETCH_RETRIES": str(FETCH_RETRIES),
        "MODERATOR_HTTP__HOST": "127.0.0.1",
        "MODERATOR_HTTP__PORT": "0",
    }
    return env | {f"MODERATOR_{k.upper()}": v for k, v in extra.items()}


def fetch_deadline_s() -> float:
    """The service's bound on one URL fetch, retries and backoff included."""
    return FetchPolicy(timeout_s=FETCH_TIMEOUT_S, retries=FETCH_RETRIES, max_bytes=1).deadline_s


def duplicate_bound(faults: int) -> int:
    """Most extra copies `faults` crashes or revocations may cause.

    Each can re-deliver what was uncommitted: events in flight (MAX_IN_FLIGHT, plus one poll
    that arrived before the pause) and what finished since the last commit (the service
    commits once MAX_POLL_RECORDS have finished, checked after each poll, or every second).
    """
    return faults * (MAX_IN_FLIGHT + 2 * MAX_POLL_RECORDS)


@dataclass
class Result:
    """One scenario's figures, as the report prints them."""

    name: str
    title: str
    events: int
    faults: list[str]
    tally: Tally
    restarts: int  # replicas that exited on their own and were restarted
    crash_codes: list[int]
    stop_codes: list[int]  # exit codes of the final graceful stop (0 expected)
    wall_s: float
    rate: float  # answered ids per second, first to last answer
    peak_rss: int
    dup_bound: int
    notes: list[str] = field(default_factory=list)
    fault_answered: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # targets missed beyond the tally's

    @property
    def mid_run(self) -> bool:
        """Every fault began before the last event was answered."""
        return bool(self.faults) and all(n < self.events for n in self.fault_answered)

    @property
    def ok(self) -> bool:
        return (
            self.tally.ok
            and self.tally.extra_copies <= self.dup_bound
            and all(code == 0 for code in self.stop_codes)
            and not self.problems
        )


@dataclass
class Run:
    """What a fault driver gets: the fleet, the checker, the stack and a fault log."""

    name: str
    events: int
    fleet: Fleet
    checker: Checker
    stack: Stack
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    faults: list[str] = field(default_factory=list)
    fault_answered: list[int] = field(default_factory=list)  # ids answered when each began
    notes: list[str] = field(default_factory=list)
    fault_count: int = 0  # faults that can re-deliver (crashes, revocations)

    def mark(self) -> tuple[float, int]:
        """When a fault starts: seconds into the run and ids answered so far."""
        return time.monotonic() - self.started, self.checker.answered

    def fault(
        self, text: str, *, at: tuple[float, int] | None = None, redelivers: bool = True
    ) -> None:
        """Record a fault injected at `at` (default: now)."""
        seconds, done = at or self.mark()
        self.faults.append(f"{text} (at t={seconds:.0f} s, {done}/{self.events} answered)")
        self.fault_answered.append(done)
        self.fault_count += int(redelivers)

    async def reach(self, fraction: float, timeout_s: float) -> bool:
        """Wait until `fraction` of the events are answered."""
        return await self.checker.wait_for(int(self.events * fraction), timeout_s)

    async def moments(self, count: int) -> AsyncIterator[int]:
        """Yield 0..count-1, each at a random moment inside its own of `count` equal slices
        of 5-90 % answered: random, yet spread over the run. Each moment also waits for
        progress since the previous one, so every fault meets a replica that is working (not
        one still starting)."""
        progress = max(5, self.events // 50)
        floor = 0
        for i in range(count):
            fraction = 0.05 + 0.85 * (i + self.rng.uniform(0.15, 0.85)) / count
            target = max(int(self.events * fraction), floor + progress)
            if target >= self.events or not await self.checker.wait_for(target, 600):
                self.notes.append(f"fault {i + 1} not injected: the run ended first")
                return
            await asyncio.sleep(self.rng.uniform(0.0, 0.5))
            yield i
            floor = self.checker.answered


Faults = Callable[[Run], Coroutine[Any, Any, None]]
# Sends a scenario's input itself (to the input topic named): for records `produce` cannot write.
Sender = Callable[[KafkaSettings, str], Coroutine[Any, Any, None]]


@dataclass
class Context:
    """Where scenarios run: the private stack, a work directory and the seed."""

    stack: Stack
    work_dir: Path
    seed: int = 1
    say: Callable[[str], None] = print
    timeout_s: float | None = None  # per scenario; default from the event count


async def _topics(settings: KafkaSettings, name: str) -> dict[str, str]:
    fresh = Topics(settings, f"chaos.{name}-{uuid.uuid4().hex[:8]}.")
    return {
        "input": await fresh.make("in", partitions=INPUT_PARTITIONS),
        "verdicts": await fresh.make("verdicts", partitions=3),
        "dlq": await fresh.make("dlq", partitions=1),
    }


async def run_scenario(
    ctx: Context,
    name: str,
    title: str,
    work: Workload,
    faults: Faults,
    *,
    replicas: int = 1,
    rate: float | None = None,
    env: dict[str, str] | None = None,
    send: Sender | None = None,
    faults_planned: bool = True,
) -> Result:
    """Send `work` (all at once, at `rate` events/s, or through `send`), serve it, run
    `faults`, tally. With `send`, `work`'s ids are input positions ("partition:offset")."""
    stack = ctx.stack
    settings = KafkaSettings(bootstrap_servers=stack.bootstrap)
    topics = await _topics(settings, name)
    group = f"chaos-{name}-{uuid.uuid4().hex[:8]}"
    log_dir = ctx.work_dir / name
    environment = serve_env(stack.bootstrap, stack.redis_url, topics, group, **(env or {}))
    fleet = Fleet(environment, log_dir)
    checker = Checker(settings, topics["verdicts"], topics["dlq"], by_position=send is not None)
    n = len(work.events)
    timeout = ctx.timeout_s or 240.0 + n / 10
    ctx.say(f"[{name}] {n} events, timeout {timeout:.0f} s, logs in {log_dir}")
    producer: asyncio.Task[None] | None = None
    if send is not None:
        await send(settings, topics["input"])
    elif rate is None:
        await produce(settings, topics["input"], work.events)
    else:
        producer = asyncio.create_task(produce(settings, topics["input"], work.events, rate=rate))
    await checker.start()
    run = Run(name, n, fleet, checker, stack, random.Random(f"{ctx.seed}-{name}"))
    started = time.monotonic()
    stop_codes: list[int] = []
    try:
        await fleet.scale(replicas)
        driver = asyncio.create_task(faults(run), name=f"chaos-{name}-faults")
        finished = await checker.wait_for(n, timeout)
        if not driver.done():
            # Every fault is timed before 100 %, so a driver still running waits on a
            # restart; give it a bounded while, then report what it did.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(driver), 120)
        if driver.done():
            driver.result()  # a driver that failed (say, a broker that would not restart) raises
        else:
            driver.cancel()
            run.notes.append("fault driver did not finish; cancelled")
        if not finished:
            run.notes.append(f"timed out after {timeout:.0f} s")
        if producer is not None:
            await producer
        stop_codes = await fleet.stop()
        await checker.settle(SETTLE_S)
    finally:
        if producer is not None and not producer.done():
            producer.cancel()
        await fleet.stop()
        await checker.stop()
    wall = time.monotonic() - started
    tally = checker.tally(work.expected)
    span = _answer_span(checker)
    result = Result(
        name=name,
        title=title,
        events=n,
        faults=run.faults,
        tally=tally,
        restarts=fleet.restarts,
        crash_codes=fleet.crash_codes,
        stop_codes=stop_codes,
        wall_s=wall,
        rate=tally.answered / span if span > 0 else 0.0,
        peak_rss=fleet.peak_rss,
        dup_bound=duplicate_bound(max(run.fault_count, 0)),
        notes=run.notes,
        fault_answered=run.fault_answered,
    )
    if faults_planned and not result.mid_run:
        result.problems.append("a fault began only after every event was answered")
    ctx.say(
        f"[{name}] lost {tally.lost}, duplicated {tally.duplicated_ids} ids "
        f"(+{tally.extra_copies} copies, bound {result.dup_bound}), inconsistent "
        f"{tally.inconsistent}, wrong {tally.wrong_outcome}, restarts {fleet.restarts}, "
        f"{wall:.0f} s, {result.rate:.0f} events/s"
    )
    return result


def _answer_span(checker: Checker) -> float:
    times = [copies[0].at for copies in checker.answers.values()]
    return max(times) - min(times) if len(times) > 1 else 0.0


# ---------------------------------------------------------------- the scenarios


async def kill(ctx: Context, events: int, kills: int = 5) -> Result:
    """SIGKILL the replica at `kills` random moments, restarting it each time."""

    async def faults(run: Run) -> None:
        async for _ in run.moments(kills):
            at = run.mark()
            pid = run.fleet.kill(0)
            run.fault(f"SIGKILL of the replica's process group (pid {pid}), restarted", at=at)

    work = inline_workload(events, run_id("kill"), ctx.seed)
    title = f"SIGKILL the service {kills} times at random moments, restart each time"
    return await run_scenario(ctx, "kill", title, work, faults)


async def broker(ctx: Context, events: int, rate: float, outage_s: float = 10.0) -> Result:
    """Stop the broker cleanly and restart it; later SIGKILL it and restart it."""

    async def faults(run: Run) -> None:
        if await run.reach(0.25, 600):
            at = run.mark()
            began = time.monotonic()
            await run.stack.script("down", "kafka")
            stopping = time.monotonic() - began
            await asyncio.sleep(outage_s)
            began = time.monotonic()
            await run.stack.script("up", "kafka")
            run.fault(
                f"broker stopped (SIGTERM, controlled shutdown {stopping:.0f} s), kept down "
                f"{outage_s:g} s, restarted on its data "
                f"({time.monotonic() - began:.0f} s to ready)",
                at=at,
                redelivers=False,
            )
            run.fleet.reset_backoff()
        if await run.reach(0.6, 600):
            at = run.mark()
            pid = await run.stack.hard_kill("kafka")
            await asyncio.sleep(outage_s / 2)
            began = time.monotonic()
            await run.stack.script("up", "kafka")
            run.fault(
                f"broker SIGKILLed (pid {pid}), kept down {outage_s / 2:g} s, restarted "
                f"({time.monotonic() - began:.0f} s to ready)",
                at=at,
                redelivers=False,
            )
        # A replica that crashed while the broker was away re-delivers its uncommitted work,
        # and so may one whose commits failed during the outage.
        run.fault_count += 2 + run.fleet.restarts

    work = inline_workload(events, run_id("broker"), ctx.seed + 1)
    title = "Stop and restart the Kafka broker mid-run (clean stop, then SIGKILL)"
    return await run_scenario(ctx, "broker", title, work, faults, rate=rate)


async def redis(ctx: Context, events: int, rate: float, outage_s: float = 8.0) -> Result:
    """Stop Redis and start it again; later freeze it (SIGSTOP) and thaw it."""

    async def faults(run: Run) -> None:
        if not await run.reach(0.2, 600):
            return
        at = run.mark()
        await run.stack.script("down", "redis")
        await asyncio.sleep(outage_s)
        await run.stack.script("up", "redis")
        run.fault(
            f"Redis stopped (SIGTERM), kept down {outage_s:g} s, restarted empty",
            at=at,
            redelivers=False,
        )
        # Past the cache's circuit breaker, so the service is using Redis again and meets
        # the freeze in its commands rather than skipping Redis anyway.
        await asyncio.sleep(_BREAKER_S + 1)
        at = run.mark()
        pid = run.stack.signal("redis", signal.SIGSTOP)
        try:
            await asyncio.sleep(outage_s)
        finally:
            run.stack.signal("redis", signal.SIGCONT)
        run.fault(
            f"Redis frozen (SIGSTOP pid {pid}) for {outage_s:g} s, then SIGCONT",
            at=at,
            redelivers=False,
        )
        await asyncio.sleep(_BREAKER_S + 1)
        seen = run.fleet.count_logged("redis unavailable")
        back = run.fleet.count_logged("redis is back")
        run.notes.append(f"the service logged 'redis unavailable' {seen}x, 'redis is back' {back}x")

    work = inline_workload(events, run_id("redis"), ctx.seed + 2)
    title = "Stop Redis mid-run and start it again; freeze it (SIGSTOP) and thaw it"
    return await run_scenario(ctx, "redis", title, work, faults, rate=rate)


async def rebalance(ctx: Context, events: int, rate: float) -> Result:
    """Scale 1 → 3 → 1 replicas in one group while events stream in at `rate`."""

    async def faults(run: Run) -> None:
        if not await run.reach(0.15, 600):
            return
        at = run.mark()
        await run.fleet.scale(3)
        joined = await run.fleet.wait_logged("partitions assigned", timeout_s=120)
        run.fault(
            "scaled 1 → 3 replicas"
            + (" (all 3 held partitions)" if joined else " (not all joined in 120 s)"),
            at=at,
        )
        if not await run.reach(0.55, 600):
            return
        at = run.mark()
        await run.fleet.scale(1)
        drained = run.fleet.exit_codes[-2:]
        run.fault(f"scaled 3 → 1 replica (SIGTERM, drained; exit codes {drained})", at=at)

    work = inline_workload(events, run_id("rebalance"), ctx.seed + 3)
    title = "Rebalances: scale 1 → 3 → 1 service processes in one group mid-run"
    return await run_scenario(ctx, "rebalance", title, work, faults, rate=rate)


async def slow_fetch(ctx: Context, events: int, share: float = 0.03) -> Result:
    """URL events on a black-holing (and a trickling) server amid normal traffic."""
    work = inline_workload(events, run_id("slow"), ctx.seed + 4)
    with ImageServer() as server:
        slow = _with_slow_urls(work, server, share, random.Random(ctx.seed))

        async def faults(run: Run) -> None:
            run.fault(
                f"{slow['hole']} events black-holed, {slow['trickle']} trickled at 4 bytes/s, "
                f"{slow['good']} served normally by URL",
                redelivers=False,
            )
            if await run.checker.wait_for(events, 600):
                tries = [
                    copies[0].attempts
                    for copies in run.checker.answers.values()
                    if copies[0].outcome == "dlq:fetch_failed"
                ]
                run.notes.append(
                    f"fetch attempts (x-attempts) of the failed fetches: "
                    f"{min(tries, default=0)}-{max(tries, default=0)} "
                    f"(MODERATOR_PIPELINE__FETCH_RETRIES={FETCH_RETRIES})"
                )

        result = await run_scenario(
            ctx,
            "slow-fetch",
            "Slow / black-holing image server: bounded retries, then DLQ fetch_failed",
            work,
            faults,
            env={"PIPELINE__FETCH_ALLOW_PRIVATE": "true"},
        )
    deadline = fetch_deadline_s()
    result.notes.append(
        f"fetch deadline (timeout × attempts + backoff) {deadline:.1f} s; longest gap between "
        f"newly answered ids {result.tally.longest_gap_s:.2f} s"
    )
    if result.tally.longest_gap_s >= deadline:
        result.problems.append("head-of-line stall: a gap between answers reached the deadline")
    return result


def _with_slow_urls(
    work: Workload, server: ImageServer, share: float, rng: random.Random
) -> dict[str, int]:
    """Turn `share` of the good events into slow URLs and as many into good URLs."""
    counts = {"hole": 0, "trickle": 0, "good": 0}
    for position, event in enumerate(work.events):
        if event.expect != VERDICT or rng.random() >= 2 * share:
            continue
        kind = rng.choice(["hole", "trickle", "good", "good"])
        counts[kind] += 1
        if kind == "good":
            name = f"{event.id}.jpg"
            server.images[name] = _image_of(event)
            url, expect = server.url(f"/img/{name}"), VERDICT
        else:
            url, expect = server.url(f"/{kind}/{event.id}.jpg"), "dlq:fetch_failed"
        work.events[position] = Event(event.id, json_event(event.id, url=url), expect)
    return counts


def _image_of(event: Event) -> bytes:
    return base64.b64decode(json.loads(event.value)["image_b64"])


def run_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


SCENARIOS = ("kill", "broker", "redis", "rebalance", "slow-fetch", "decode-kill", "fuzz")
