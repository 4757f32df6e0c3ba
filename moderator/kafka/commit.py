"""The consume loop: poll, start one task per record, pause under pressure, commit what finished.

Each round, in order:
  1. poll up to `max_poll_records` records;
  2. accept each one: note its offset as received, charge its bytes to the memory budget (a
     `Hold`, released when it is answered), and start its task (`handle`);
  3. pause every assigned partition while the events in flight reach `max_in_flight` or the
     budget is spent, and resume once both are back under half;
  4. commit each partition's contiguous finished prefix (`OffsetTracker`) every second, or
     sooner once a poll's worth of events finished since the last commit;
  5. every few seconds, report each partition's lag behind its end offset.

A record is finished only when `handle` returns: its verdict or dead letter is acknowledged.
A task that raises (a `ServiceFault`: the broker refused a send, inference broke) stops the
loop without finishing its record, so a restart answers it again.

On revoke, what finished in the revoked partitions is committed and the rest is cancelled (the
next owner redoes it). On stop, `drain` waits for the events in flight until one deadline
(after a fatal error it does not wait: the service is broken), cancels what is left, gives the
cancelled events up to half a second to end, and commits what finished: it is answered and
must not be answered again. A failed commit leaves offsets uncommitted, to be committed next
round or redone after a rebalance; docs/delivery.md has every case.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Protocol

from moderator.cpu import thread_cpu
from moderator.errors import CommitFailed, KafkaFailed
from moderator.kafka.offsets import OffsetTracker
from moderator.kafka.types import TP, GroupClient, Record
from moderator.log import get
from moderator.pipeline.budget import Hold, MemoryBudget

log = get("consume")
COMMIT_INTERVAL_S = 1.0  # with max_poll_records finished events, bounds re-delivery
LAG_INTERVAL_S = 5.0
_POLL_S = 0.1
_POLL_RETRY_S = 0.5  # after a failed poll: the client reconnects on its own meanwhile
_CANCEL_WAIT_S = 0.5  # abandoned events stop at their next await; a shielded decode ends later

Handler = Callable[[Record, Hold], Awaitable[None]]


class CommitSensor(Protocol):
    """The hooks the loop reports through (`moderator.service.sensor.Sensor` is one)."""

    def on_received(self, topic: str) -> None: ...
    def on_in_flight(self, events: int, held_bytes: int) -> None: ...
    def on_paused(self, partitions: int) -> None: ...
    def on_commit(self, ok: bool) -> None: ...
    def on_lag(self, part: TP, lag: int) -> None: ...
    def on_revoked(self, part: TP) -> None: ...
    def on_cpu(self, stage: str, seconds: float, where: str = "loop") -> None: ...


class CommitLoop:
    """Runs `handle` once per consumed record and commits records once they are finished."""

    def __init__(
        self,
        client: GroupClient,
        handle: Handler,
        *,
        budget: MemoryBudget,
        sensor: CommitSensor,
        max_poll_records: int,
        max_in_flight: int,
        stopping: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`stopping`, when given, is shared with the owner: setting it stops the loop."""
        self.client = client
        self.tracker = OffsetTracker()
        self.fatal: BaseException | None = None
        self.joined = False
        self.last_poll = clock()
        self._handle = handle
        self._budget = budget
        self._sensor = sensor
        self._max_poll_records = max_poll_records
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._tasks: dict[TP, set[asyncio.Task[None]]] = defaultdict(set)
        self._paused = False
        self._finished_since_commit = 0
        self._stopping = stopping or asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Rounds until `stop()` or a fatal error (then in `fatal`); `drain` comes next."""
        next_commit = self._clock() + COMMIT_INTERVAL_S
        next_lag = self._clock()
        while not self._stopping.is_set():
            self.last_poll = self._clock()
            try:
                records = await self.client.poll(_POLL_S, self._max_poll_records)
            except KafkaFailed as exc:
                log.warning("poll failed; retrying", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(_POLL_RETRY_S)
                continue
            started = thread_cpu()
            for record in records:
                self._accept(record)
            self._backpressure()
            self._sensor.on_cpu("commit", thread_cpu() - started)
            now = self._clock()
            # At hundreds of events per second a second of work is more than the events in
            # flight, and all of it would be answered again after a crash.
            if now >= next_commit or self._finished_since_commit >= self._max_poll_records:
                await self.commit()
                next_commit = now + COMMIT_INTERVAL_S
            if now >= next_lag:
                self._report_lag()
                next_lag = now + LAG_INTERVAL_S

    async def drain(self, deadline_s: float) -> None:
        """Let the events in flight finish within `deadline_s` (none after a fatal error),
        cancel the rest, then commit what finished."""
        left = {t for tasks in self._tasks.values() for t in tasks}
        if left and self.fatal is None:
            _done, left = await asyncio.wait(left, timeout=deadline_s)
        if left:
            log.warning("abandoning events in flight", extra={"fields": {"abandoned": len(left)}})
            for task in left:
                task.cancel()
            # They end at their next step (a shielded decode later), releasing their holds.
            await asyncio.wait(left, timeout=_CANCEL_WAIT_S)
        await self.commit()

    async def commit(self, only: set[TP] | None = None) -> None:
        """Commit the finished prefix of `only`, or of every assigned partition."""
        if only is None:
            self._finished_since_commit = 0
        started = thread_cpu()
        scope = self.client.assignment() if only is None else only
        offsets = self.tracker.committable(scope)
        self._sensor.on_cpu("commit", thread_cpu() - started)
        if not offsets:
            return
        try:
            await self.client.commit(offsets)
        except CommitFailed as exc:
            # A rebalance or broker blip: the work stays uncommitted and is re-delivered.
            self._sensor.on_commit(False)
            log.warning("offset commit failed", extra={"fields": {"error": str(exc)}})
            return
        self.tracker.mark_committed(offsets)
        self._sensor.on_commit(True)

    # -- rebalance callbacks (the client runs them while the loop awaits it) ----------------

    async def revoked(self, revoked: set[TP]) -> None:
        """Commit what finished, abandon the rest: the next owner re-processes it."""
        if revoked:
            await self.commit(revoked)
        for part in revoked:
            for task in list(self._tasks.pop(part, ())):
                task.cancel()
            self._sensor.on_revoked(part)
        self.tracker.forget(revoked)
        self._paused = False
        log.info("partitions revoked", extra={"fields": {"partitions": sorted(revoked)}})

    def assigned(self, assigned: set[TP]) -> None:
        self.joined = True
        log.info("partitions assigned", extra={"fields": {"partitions": sorted(assigned)}})

    # -- one round's steps -------------------------------------------------------------------

    def _accept(self, record: Record) -> None:
        part = (record.topic, record.partition)
        self.tracker.received(record.topic, record.partition, record.offset)
        self._sensor.on_received(record.topic)
        size = len(record.value or b"") + len(record.key or b"")
        size += sum(len(name) + len(value or b"") for name, value in record.headers)
        hold = Hold(self._budget, size)
        task = asyncio.create_task(
            self._run_one(record, hold), name=f"event-{record.partition}-{record.offset}"
        )
        self._tasks[part].add(task)
        task.add_done_callback(lambda t: self._done(part, t, hold))
        self._sensor.on_in_flight(self.tracker.in_flight(), self._budget.used)

    async def _run_one(self, record: Record, hold: Hold) -> None:
        await self._handle(record, hold)
        self.tracker.finished(record.topic, record.partition, record.offset)
        self._finished_since_commit += 1

    def _done(self, part: TP, task: asyncio.Task[None], hold: Hold) -> None:
        started = thread_cpu()
        try:
            self._settle(part, task, hold)
        finally:
            self._sensor.on_cpu("commit", thread_cpu() - started)

    def _settle(self, part: TP, task: asyncio.Task[None], hold: Hold) -> None:
        self._tasks[part].discard(task)
        hold.release()
        self._sensor.on_in_flight(self.tracker.in_flight(), self._budget.used)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.fatal is None:
            # Not the event's fault (Kafka unreachable past retries, inference broken):
            # stop without committing it, so a restart processes it again.
            self.fatal = exc
            log.error("fatal error; stopping", exc_info=exc)
            self.stop()

    def _backpressure(self) -> None:
        in_flight = self.tracker.in_flight()
        assigned = self.client.assignment()
        budget = self._budget
        if not self._paused and (in_flight >= self._max_in_flight or budget.spent) and assigned:
            self.client.pause(assigned)
            self._paused = True
            self._sensor.on_paused(len(assigned))
        elif (
            self._paused
            and in_flight <= self._max_in_flight // 2
            and budget.used <= budget.limit // 2
        ):
            self.client.resume(assigned)
            self._paused = False
            self._sensor.on_paused(0)

    def _report_lag(self) -> None:
        for part in self.client.assignment():
            end = self.client.highwater(part)
            if end is None:
                continue
            done = self.tracker.committed_point(*part)
            self._sensor.on_lag(part, end - done if done is not None else end)
