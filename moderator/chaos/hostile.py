"""Scenarios of hostile input and dying decode processes, on the same harness as the others.

* decode-kill  SIGKILL one decode process of the replica at random moments: the service
               replaces its decode processes and retries what they held, so nothing is lost,
               nothing answered twice, no event is dead-lettered for it, and the replica
               itself never restarts.
* fuzz         random and mutated records (`fuzz.py`: noise, broken JSON events, mangled
               CloudEvents, header names that are not UTF-8) through a raw producer: each
               record is answered once, none as `internal_error`, and the replica never
               restarts. Records are tracked by input position, since their ids may be
               missing, invalid or shared.
"""

from __future__ import annotations

import contextlib
import os
import signal

from moderator.chaos.fuzz import records as fuzz_records
from moderator.chaos.scenarios import INPUT_PARTITIONS, Context, Result, Run, run_id, run_scenario
from moderator.chaos.workload import ANSWERED, Event, Workload, inline_workload
from moderator.harness.fleet import children
from moderator.kafka.raw import RawProducer, RawRecord
from moderator.settings import KafkaSettings

_FUZZ_BATCH = 50  # records per raw batch: one partition each, round robin


async def decode_kill(ctx: Context, events: int, kills: int = 5) -> Result:
    """SIGKILL a decode process of the replica `kills` times; the replica serves on."""

    async def faults(run: Run) -> None:
        async for i in run.moments(kills):
            workers = decode_processes(run.fleet.replicas[0].pid)
            if not workers:
                run.notes.append(f"fault {i + 1} not injected: no decode process found")
                continue
            victim = run.rng.choice(workers)
            at = run.mark()
            _kill(victim)
            run.fault(f"SIGKILL of decode process {victim}", at=at, redelivers=False)

    work = inline_workload(events, run_id("decode-kill"), ctx.seed + 5)
    title = f"SIGKILL a decode process {kills} times at random moments; the replica serves on"
    result = await run_scenario(ctx, "decode-kill", title, work, faults)
    if result.restarts:
        result.problems.append(f"the replica restarted {result.restarts} times")
    return result


async def fuzz(ctx: Context, records: int) -> Result:
    """`records` random and mutated records; each answered once, none as internal_error."""
    generated = fuzz_records(ctx.seed, records)
    work = Workload()
    batches: list[tuple[int, list[RawRecord]]] = []
    next_offset = [0] * INPUT_PARTITIONS  # fresh topics: offsets start at 0 per partition
    for number, start in enumerate(range(0, len(generated), _FUZZ_BATCH)):
        partition = number % INPUT_PARTITIONS
        chunk = [record for _kind, record in generated[start : start + _FUZZ_BATCH]]
        batches.append((partition, chunk))
        for _ in chunk:
            work.add(Event(f"{partition}:{next_offset[partition]}", b"", ANSWERED))
            next_offset[partition] += 1

    async def send(settings: KafkaSettings, topic: str) -> None:
        producer = RawProducer(settings)
        await producer.start()
        try:
            for partition, chunk in batches:
                await producer.send_batch(topic, partition, chunk)
        finally:
            await producer.stop()

    async def faults(run: Run) -> None:
        kinds = sorted({kind for kind, _record in generated})
        run.notes.append(f"record kinds, {records // len(kinds)} each: {', '.join(kinds)}")

    title = "Random and mutated records, raw header bytes included: each answered once"
    result = await run_scenario(ctx, "fuzz", title, work, faults, send=send, faults_planned=False)
    if result.restarts:
        result.problems.append(f"the replica restarted {result.restarts} times")
    return result


def decode_processes(pid: int) -> list[int]:
    """The decode processes under a `moderator serve` process: its children's children (the
    forkserver's), sorted."""
    found: list[int] = []
    for child in children(pid):
        found += children(child)
    return sorted(found)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have died on its own meanwhile
        os.kill(pid, signal.SIGKILL)
