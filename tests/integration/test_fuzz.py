"""A bounded fuzz of a real `moderator serve` process: random and mutated records in, each
answered exactly once (a verdict or a dead letter), and the process never stops.

The records (moderator/chaos/fuzz.py) are sent through a raw producer, so header names that are not
UTF-8 reach the broker as they would from a non-Python client. Dead letters carry the input
offset, so each is checked to be unique; verdicts carry only the event id, which mutations may
make collide, so the total of answers (read for a while after the last one) must equal the
records sent.
"""

from __future__ import annotations

import asyncio
import collections
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moderator import kafka
from moderator.chaos.fuzz import records as fuzz_records
from moderator.chaos.scenarios import serve_env
from moderator.harness.fleet import Fleet
from moderator.kafka.raw import send_raw
from moderator.settings import KafkaSettings

RECORDS = int(os.environ.get("MODERATOR_FUZZ_RECORDS", "3000"))
SEED = int(os.environ.get("MODERATOR_FUZZ_SEED", "20261207"))
BATCH = 50
ANSWER_TIMEOUT_S = 240.0


async def _send(settings: KafkaSettings, topic: str) -> tuple[int, collections.Counter[str]]:
    """Send the fuzz records to partition 0; returns how many and how many of each kind."""
    producer = kafka.make_producer(settings, enable_idempotence=False)
    await producer.start()
    kinds: collections.Counter[str] = collections.Counter()
    generated = fuzz_records(SEED, RECORDS)
    try:
        for start in range(0, len(generated), BATCH):
            chunk = generated[start : start + BATCH]
            await send_raw(producer, topic, 0, [record for _kind, record in chunk])
            kinds.update(kind for kind, _record in chunk)
    finally:
        await producer.stop()
    return len(generated), kinds


async def _answers(
    settings: KafkaSettings, topics: dict[str, str], expected: int
) -> tuple[list[str], list[int], collections.Counter[str]]:
    """Verdict ids, dead-letter input offsets and reasons, read until `expected` answers."""
    reader = await kafka.open_reader(settings, [topics["verdicts"], topics["dlq"]])
    verdict_ids: list[str] = []
    dead_offsets: list[int] = []
    reasons: collections.Counter[str] = collections.Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ANSWER_TIMEOUT_S
    try:
        while len(verdict_ids) + len(dead_offsets) < expected and loop.time() < deadline:
            for r in await reader.poll(0.5):
                if r.topic == topics["verdicts"]:
                    verdict_ids.append((r.key or b"").decode())
                    continue
                headers = dict(r.headers)
                dead_offsets.append(int(headers["x-original-offset"] or b"-1"))
                reasons[(headers["x-error-reason"] or b"").decode()] += 1
        await asyncio.sleep(2)  # anything answered twice would arrive now
        for r in await reader.poll(1.0):
            if r.topic == topics["verdicts"]:
                verdict_ids.append((r.key or b"").decode())
            else:
                dead_offsets.append(int(dict(r.headers)["x-original-offset"] or b"-1"))
    finally:
        await reader.close()
    return verdict_ids, dead_offsets, reasons


async def test_random_and_mutated_records_are_each_answered_once(
    kafka_bootstrap: str, redis_url: str, topic_factory: Callable[..., Any], tmp_path: Path
) -> None:
    topics = {
        "input": await topic_factory(1, label="fuzz-in"),
        "verdicts": await topic_factory(1, label="fuzz-verdicts"),
        "dlq": await topic_factory(1, label="fuzz-dlq"),
    }
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    group = f"moderator-fuzz-{uuid.uuid4().hex[:8]}"
    fleet = Fleet(serve_env(kafka_bootstrap, redis_url, topics, group), tmp_path)
    await fleet.scale(1)
    try:
        sent, kinds = await _send(settings, topics["input"])
        verdict_ids, dead_offsets, reasons = await _answers(settings, topics, sent)
        assert fleet.restarts == 0, f"service crashed: {fleet.crash_codes}\n{fleet.log_tail()}"
        assert fleet.replicas[0].process.poll() is None, "the service is not running"
    finally:
        codes = await fleet.stop()
    assert codes == [0], fleet.log_tail()
    answered = len(verdict_ids) + len(dead_offsets)
    assert len(set(dead_offsets)) == len(dead_offsets), "a record was dead-lettered twice"
    assert set(dead_offsets) <= set(range(sent)), "a dead letter names an offset never sent"
    assert answered == sent, f"{sent} records sent, {answered} answered"
    assert reasons["internal_error"] == 0, fleet.log_tail(6000)
    assert len(verdict_ids) > 0
    print(
        f"fuzz: seed {SEED}, {sent} records ({dict(sorted(kinds.items()))}), answered {answered} "
        f"({len(verdict_ids)} verdicts, dead letters {dict(sorted(reasons.items()))}), "
        f"crashes {fleet.restarts}"
    )
