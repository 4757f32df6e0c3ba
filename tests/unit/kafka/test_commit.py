"""The commit loop (`moderator.kafka.commit`) on the in-memory Kafka (`moderator.kafka.fake`):
what is committed when, pausing, rebalances, fatal errors and the drain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

import pytest

from moderator.errors import InferenceFailed
from moderator.kafka import commit
from moderator.kafka.commit import CommitLoop
from moderator.kafka.fake import FakeBroker, FakeGroupConsumer
from moderator.kafka.types import TP, Record
from moderator.pipeline.budget import Hold, MemoryBudget
from moderator.service.metrics import Metrics
from moderator.service.sensor import Sensor

TOPIC = "in"


class _Harness:
    """A loop over a fake topic whose handler the test controls."""

    def __init__(
        self,
        handle: Callable[[Record, Hold], Awaitable[None]],
        *,
        partitions: int = 1,
        max_in_flight: int = 100,
        budget_bytes: int = 1 << 20,
    ) -> None:
        self.broker = FakeBroker(partitions)
        self.broker.create_topic(TOPIC)
        self.consumer = FakeGroupConsumer(self.broker, TOPIC)
        self.metrics = Metrics()
        self.budget = MemoryBudget(budget_bytes)
        self.loop = CommitLoop(
            self.consumer,
            handle,
            budget=self.budget,
            sensor=Sensor(self.metrics),
            max_poll_records=10,
            max_in_flight=max_in_flight,
        )

    def produce(self, count: int, *, partition: int = 0, size: int = 10) -> None:
        for i in range(count):
            self.broker.append(TOPIC, bytes(size), key=str(i).encode(), partition=partition)

    async def start(self) -> asyncio.Task[None]:
        await self.consumer.start(self.loop.assigned, self.loop.revoked)
        return asyncio.create_task(self.loop.run())

    async def stop(self, task: asyncio.Task[None], deadline_s: float = 1.0) -> None:
        self.loop.stop()
        await task
        await self.loop.drain(deadline_s)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the condition never held")


async def test_every_record_is_handled_once_and_committed_after_it_finished() -> None:
    handled: list[int] = []

    async def handle(record: Record, hold: Hold) -> None:
        handled.append(record.offset)

    h = _Harness(handle)
    h.produce(25)
    task = await h.start()
    await _until(lambda: len(handled) == 25)
    await h.stop(task)
    assert sorted(handled) == list(range(25))
    assert h.broker.committed == {(TOPIC, 0): 25}
    assert h.budget.used == 0  # every hold released
    assert h.sample("moderator_events_consumed_total", topic=TOPIC) == 25


async def test_only_the_contiguous_finished_prefix_is_committed() -> None:
    gate = asyncio.Event()

    async def handle(record: Record, hold: Hold) -> None:
        if record.offset == 3:
            await gate.wait()

    h = _Harness(handle)
    h.produce(8)
    task = await h.start()
    await _until(lambda: h.loop.tracker.in_flight() == 1)
    await h.loop.commit()
    assert h.broker.committed == {(TOPIC, 0): 3}  # 4..7 finished, but 3 holds them back
    gate.set()
    await _until(lambda: h.loop.tracker.in_flight() == 0)
    await h.stop(task)
    assert h.broker.committed == {(TOPIC, 0): 8}


async def test_partitions_pause_at_max_in_flight_and_resume_at_half() -> None:
    gates: dict[int, asyncio.Event] = {}

    async def handle(record: Record, hold: Hold) -> None:
        await gates.setdefault(record.offset, asyncio.Event()).wait()

    h = _Harness(handle, max_in_flight=4)
    moves: list[tuple[str, int]] = []  # (pause | resume, events in flight then)
    pause, resume = h.consumer.pause, h.consumer.resume

    def pausing(parts: Collection[TP]) -> None:
        moves.append(("pause", h.loop.tracker.in_flight()))
        pause(parts)

    def resuming(parts: Collection[TP]) -> None:
        moves.append(("resume", h.loop.tracker.in_flight()))
        resume(parts)

    h.consumer.pause = pausing  # type: ignore[method-assign]
    h.consumer.resume = resuming  # type: ignore[method-assign]
    h.produce(30)
    task = await h.start()
    await _until(lambda: bool(h.consumer.paused))
    assert h.sample("moderator_paused_partitions") == 1
    # One poll may overshoot the limit; no poll starts while paused.
    in_flight = h.loop.tracker.in_flight()
    await asyncio.sleep(0.3)
    assert h.loop.tracker.in_flight() == in_flight >= 4
    for offset in range(30):  # answered one at a time, oldest first, a loop round apart
        gates.setdefault(offset, asyncio.Event()).set()
        await asyncio.sleep(0.12)
    await _until(lambda: h.broker.committed.get((TOPIC, 0)) == 30)
    await h.stop(task)
    assert [m for m, _ in moves[:2]] == ["pause", "resume"]
    assert all(n >= 4 for m, n in moves if m == "pause")
    assert all(n <= 2 for m, n in moves if m == "resume")


async def test_a_spent_memory_budget_pauses_consumption() -> None:
    gate = asyncio.Event()

    async def handle(record: Record, hold: Hold) -> None:
        await gate.wait()

    h = _Harness(handle, budget_bytes=1000)
    h.produce(30, size=200)
    task = await h.start()
    await _until(lambda: bool(h.consumer.paused))
    assert h.budget.spent
    gate.set()
    await _until(lambda: h.broker.committed.get((TOPIC, 0)) == 30)
    assert h.budget.used == 0
    await h.stop(task)


async def test_a_revoked_partition_commits_what_finished_and_its_rest_is_redone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commit, "COMMIT_INTERVAL_S", 3600.0)  # only the revoke commits
    gate = asyncio.Event()
    handled: list[tuple[int, int]] = []

    async def handle(record: Record, hold: Hold) -> None:
        if record.partition == 1 and record.offset == 2 and not gate.is_set():
            await gate.wait()  # never set before the revoke: cancelled by it
        handled.append((record.partition, record.offset))

    h = _Harness(handle, partitions=2)
    h.produce(5, partition=0)
    h.produce(5, partition=1)
    task = await h.start()
    await _until(lambda: len(handled) == 9)
    assert h.broker.committed == {}
    h.broker.rebalance({(TOPIC, 0)})
    await _until(lambda: h.consumer.assignment() == {(TOPIC, 0)})
    # Eager, as aiokafka: both partitions were revoked, and each committed what finished.
    assert h.broker.committed == {(TOPIC, 0): 5, (TOPIC, 1): 2}
    assert h.sample("moderator_consumer_lag", topic=TOPIC, partition="1") == 0
    gate.set()
    h.broker.rebalance({(TOPIC, 0), (TOPIC, 1)})  # back: 2..4 are delivered again
    await _until(lambda: h.broker.committed.get((TOPIC, 1)) == 5)
    await h.stop(task)
    assert handled.count((1, 3)) == 2  # answered before the revoke, redone after it
    assert handled.count((1, 2)) == 1  # cancelled by the revoke, answered once after it


async def test_a_service_fault_stops_the_loop_and_leaves_its_record_uncommitted() -> None:
    async def handle(record: Record, hold: Hold) -> None:
        if record.offset == 4:
            raise InferenceFailed("CUDA error")

    h = _Harness(handle)
    h.produce(10)
    task = await h.start()
    await asyncio.wait_for(task, 5)  # the loop stops on its own
    assert isinstance(h.loop.fatal, InferenceFailed)
    await h.loop.drain(1.0)
    assert h.broker.committed[(TOPIC, 0)] <= 4  # offset 4 is redone after a restart


async def test_a_refused_commit_is_counted_and_committed_next_round() -> None:
    async def handle(record: Record, hold: Hold) -> None:
        return None

    h = _Harness(handle)
    h.broker.fail_commits = 1
    h.produce(3)
    task = await h.start()
    await _until(lambda: h.broker.committed.get((TOPIC, 0)) == 3)
    await h.stop(task)
    assert h.sample("moderator_offset_commits_total", result="failed") == 1
    assert h.sample("moderator_offset_commits_total", result="ok") >= 1


async def test_a_failed_poll_is_retried() -> None:
    handled: list[int] = []

    async def handle(record: Record, hold: Hold) -> None:
        handled.append(record.offset)

    h = _Harness(handle)
    h.broker.fail_polls = 2
    h.produce(3)
    task = await h.start()
    await _until(lambda: len(handled) == 3)
    await h.stop(task)
    assert h.broker.committed == {(TOPIC, 0): 3}


async def test_the_drain_abandons_events_past_its_deadline_and_commits_the_rest() -> None:
    async def handle(record: Record, hold: Hold) -> None:
        if record.offset >= 2:
            await asyncio.sleep(60)

    h = _Harness(handle)
    h.produce(4)
    task = await h.start()
    await _until(lambda: h.loop.tracker.in_flight() == 2)
    await h.stop(task, deadline_s=0.1)
    assert h.broker.committed == {(TOPIC, 0): 2}
    assert h.budget.used == 0


async def test_lag_is_the_end_offset_less_the_committed_point() -> None:
    gate = asyncio.Event()

    async def handle(record: Record, hold: Hold) -> None:
        if record.offset >= 6:
            await gate.wait()

    h = _Harness(handle)
    h.produce(10)
    task = await h.start()
    await _until(lambda: h.loop.tracker.in_flight() == 4)
    await h.loop.commit()
    h.loop._report_lag()
    assert h.sample("moderator_consumer_lag", topic=TOPIC, partition="0") == 4
    gate.set()
    await h.stop(task)


@pytest.mark.parametrize("count", [0, 1])
async def test_stopping_with_nothing_in_flight_commits_and_returns(count: int) -> None:
    async def handle(record: Record, hold: Hold) -> None:
        return None

    h = _Harness(handle)
    h.produce(count)
    task = await h.start()
    await _until(lambda: h.loop.tracker.in_flight() == 0 and h.loop.joined)
    await asyncio.sleep(0.05)
    await h.stop(task)
    assert h.broker.committed.get((TOPIC, 0), 0) == count
