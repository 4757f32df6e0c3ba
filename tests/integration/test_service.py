"""`moderator serve` end to end against the real Kafka broker and Redis, with the demo model.

Every test publishes events with unique ids and reads the verdict and dead-letter topics back:
each id must be answered (verdict or DLQ record), with the decision the demo policy implies.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from moderator.demo.shapes import generate
from moderator.kafka import open_reader
from moderator.service.app import Service
from moderator.settings import KafkaSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
VERDICT_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "deploy" / "schemas" / "verdict.schema.json").read_text())
)
Answers = dict[str, list[dict[str, Any]]]


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _env(kafka: str, redis_url: str, topics: dict[str, str], group: str) -> dict[str, str]:
    return {
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": kafka,
        "MODERATOR_KAFKA__GROUP_ID": group,
        "MODERATOR_KAFKA__INPUT_TOPIC": topics["input"],
        "MODERATOR_KAFKA__VERDICT_TOPIC": topics["verdicts"],
        "MODERATOR_KAFKA__DLQ_TOPIC": topics["dlq"],
        "MODERATOR_KAFKA__CREATE_TOPICS": "false",
        "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": "10000",
        "MODERATOR_REDIS__URL": redis_url,
        "MODERATOR_MODEL__PATH": "demo",
        "MODERATOR_MODEL__PROVIDERS": '["cpu"]',
        "MODERATOR_POLICY__PATH": str(ROOT / "policies" / "demo.yaml"),
        "MODERATOR_PIPELINE__DECODE_WORKERS": "1",
        "MODERATOR_PIPELINE__MAX_WAIT_MS": "5",
        "MODERATOR_HTTP__HOST": "127.0.0.1",
        "MODERATOR_HTTP__PORT": "0",
    }


@pytest.fixture
async def topics(topic_factory: Callable[..., Any]) -> dict[str, str]:
    return {
        "input": await topic_factory(3, label="in"),
        "verdicts": await topic_factory(3, label="verdicts"),
        "dlq": await topic_factory(1, label="dlq"),
    }


def _events(n: int, seed: int, size: int = 96) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """n shape images as JSON events; returns records and id → label."""
    run = uuid.uuid4().hex[:8]
    records, labels = [], {}
    for i, sample in enumerate(generate(n, seed, size=size)):
        event_id = f"{run}-{i}"
        body = {
            "id": event_id,
            "image_b64": base64.b64encode(_png(sample.image)).decode(),
            # The demo policy's white-star concept applies to profile photos (and to events
            # with no surface), so "upload" keeps the expected decisions per shape simple.
            "surface": "upload",
        }
        records.append((event_id, json.dumps(body).encode()))
        labels[event_id] = sample.label
    return records, labels


async def _produce(kafka: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sends = [await producer.send(topic, value, key=key.encode()) for key, value in records]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _collect(
    kafka: str, topics: dict[str, str], ids: set[str], timeout_s: float
) -> tuple[Answers, Answers]:
    """Read verdicts and DLQ records from the start until every id is answered (or timeout)."""
    consumer = await open_reader(
        KafkaSettings(bootstrap_servers=kafka), [topics["verdicts"], topics["dlq"]]
    )
    verdicts: Answers = {}
    dead: Answers = {}
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not ids <= set(verdicts) | set(dead) and loop.time() < deadline:
            for r in await consumer.poll(0.3):
                key = (r.key or b"").decode()
                if r.topic == topics["verdicts"]:
                    verdict = json.loads(r.value or b"{}")
                    VERDICT_SCHEMA.validate(verdict)  # the published contract, on real verdicts
                    verdicts.setdefault(key, []).append(verdict)
                else:
                    headers = {k: (v or b"").decode() for k, v in r.headers}
                    dead.setdefault(key, []).append(headers)
    finally:
        await consumer.close()
    return verdicts, dead


async def _committed(kafka: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {
            p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)
        }
    finally:
        await consumer.stop()


@pytest.fixture
async def running(
    kafka_bootstrap: str, redis_url: str, topics: dict[str, str]
) -> AsyncIterator[tuple[Settings, Service, asyncio.Task[int]]]:
    group = f"moderator-test-{uuid.uuid4().hex[:8]}"
    settings = load_settings(_env(kafka_bootstrap, redis_url, topics, group))
    service = Service(settings)
    task = asyncio.create_task(service.run())
    yield settings, service, task
    service.stop()
    await asyncio.wait_for(task, 60)


async def test_every_event_is_answered_with_the_policy_decision(
    kafka_bootstrap: str,
    topics: dict[str, str],
    running: tuple[Settings, Service, asyncio.Task[int]],
) -> None:
    settings, service, task = running
    records, labels = _events(48, seed=11)
    broken = {
        f"bad-json-{uuid.uuid4().hex[:6]}": (b"{nope", "invalid_event"),
        f"svg-{uuid.uuid4().hex[:6]}": (None, "unsupported_format"),
        f"blocked-{uuid.uuid4().hex[:6]}": (None, "fetch_blocked"),
    }
    for key, (value, reason) in broken.items():
        if reason == "unsupported_format":
            value = json.dumps(
                {"id": key, "image_b64": base64.b64encode(b"<svg></svg>").decode()}
            ).encode()
        elif reason == "fetch_blocked":
            value = json.dumps({"id": key, "image_url": "http://169.254.169.254/x.png"}).encode()
        assert value is not None
        records.append((key, value))
    await _produce(kafka_bootstrap, topics["input"], records)
    verdicts, dead = await _collect(kafka_bootstrap, topics, {k for k, _ in records}, 120)

    answered = set(verdicts) | set(dead)
    assert answered == {k for k, _ in records}, "every event gets a verdict or a DLQ record"
    for key, (_, reason) in broken.items():
        assert dead[key][0]["x-error-reason"] == reason
        assert dead[key][0]["x-original-topic"] == topics["input"]
    for key, label in labels.items():
        decision = verdicts[key][0]["decision"]
        if label == "red star":
            assert decision == "flag", (key, verdicts[key][0])
        elif label == "blue circle":
            assert decision == "review", (key, verdicts[key][0])
        else:
            assert decision == "allow", (label, verdicts[key][0])
    sample = next(iter(verdicts.values()))[0]
    assert sample["model"]["id"] == "demo-shapes"
    assert len(sample["image"]["sha256"]) == 64
    # The loop's lag was sampled while it served (ten times a second).
    lag_samples = service.metrics.registry.get_sample_value(
        "moderator_event_loop_lag_seconds_count"
    )
    assert lag_samples is not None
    assert lag_samples >= 1

    # Drain: everything answered gets committed, and the service exits 0.
    service.stop()
    assert await asyncio.wait_for(task, 60) == 0
    committed = await _committed(kafka_bootstrap, settings.kafka.group_id, topics["input"], 3)
    assert sum(committed.values()) == len(records)


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "moderator", "serve"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


async def test_sigkill_mid_stream_loses_nothing(
    kafka_bootstrap: str, redis_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    group = f"moderator-kill-{uuid.uuid4().hex[:8]}"
    env = _env(kafka_bootstrap, redis_url, topics, group)
    # Enough events that the kill lands mid-stream even on a fast machine.
    records, labels = _events(1200, seed=5, size=64)
    await _produce(kafka_bootstrap, topics["input"], records)
    ids = set(labels)

    log = tmp_path / "serve.log"
    watcher = await open_reader(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), [topics["verdicts"]]
    )
    first = _serve(env, log)
    try:
        # Kill as soon as some, not all, verdicts are out: one reader polls continuously.
        partial: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while len(partial) < 20 and loop.time() < deadline:
            for batch in [await watcher.poll(0.1)]:
                partial.update((r.key or b"").decode() for r in batch)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert 0 < len(partial) < len(ids), f"kill point missed: {len(partial)} answered"
    finally:
        await watcher.close()
        if first.poll() is None:
            first.kill()
            first.wait(10)
    second = _serve(env, log)
    try:
        verdicts, dead = await _collect(kafka_bootstrap, topics, ids, 150)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, log.read_text()[-3000:]
    assert not dead
    lost = ids - set(verdicts)
    assert not lost, f"{len(lost)} events lost"
    duplicated = {k: v for k, v in verdicts.items() if len(v) > 1}
    for copies in duplicated.values():
        assert len({c["decision"] for c in copies}) == 1, "duplicates carry the same decision"
    print(
        f"kill test: {len(ids)} events, killed after {len(partial)} verdicts, "
        f"lost 0, duplicated {len(duplicated)} "
        f"({sum(len(v) for v in verdicts.values()) - len(ids)} extra copies)"
    )


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen(
        ["redis-server", *args, "--dir", str(directory)], stdout=subprocess.DEVNULL
    )


async def test_service_keeps_going_when_redis_dies(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    # A Redis of this test's own, so stopping it disturbs nobody else.
    port = 16000 + os.getpid() % 2000
    redis_proc = _start_redis(port, tmp_path)
    try:
        await asyncio.sleep(0.5)
        group = f"moderator-redis-{uuid.uuid4().hex[:8]}"
        settings = load_settings(
            _env(kafka_bootstrap, f"redis://127.0.0.1:{port}/0", topics, group)
        )
        service = Service(settings)
        task = asyncio.create_task(service.run())
        first, labels1 = _events(12, seed=21)
        await _produce(kafka_bootstrap, topics["input"], first)
        verdicts, _ = await _collect(kafka_bootstrap, topics, set(labels1), 60)
        assert set(labels1) <= set(verdicts)
        redis_proc.terminate()
        redis_proc.wait(10)
        second, labels2 = _events(12, seed=22)
        await _produce(kafka_bootstrap, topics["input"], second)
        verdicts, _ = await _collect(kafka_bootstrap, topics, set(labels2), 60)
        assert set(labels2) <= set(verdicts), "verdicts keep coming without Redis"
        assert service.metrics.cache_up._value.get() == 0
        service.stop()
        assert await asyncio.wait_for(task, 60) == 0
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()


async def test_embeddings_topic_carries_one_vector_per_image(
    kafka_bootstrap: str, redis_url: str, topics: dict[str, str], topic_factory: Callable[..., Any]
) -> None:
    embeddings_topic = await topic_factory(1, label="embeddings")
    env = _env(kafka_bootstrap, redis_url, topics, f"moderator-emb-{uuid.uuid4().hex[:8]}")
    env["MODERATOR_KAFKA__EMBEDDINGS_TOPIC"] = embeddings_topic
    service = Service(load_settings(env))
    task = asyncio.create_task(service.run())
    try:
        records, labels = _events(5, seed=31)
        await _produce(kafka_bootstrap, topics["input"], records)
        verdicts, _ = await _collect(kafka_bootstrap, topics, set(labels), 60)
        assert set(labels) <= set(verdicts)
    finally:
        service.stop()
        assert await asyncio.wait_for(task, 60) == 0
    consumer = AIOKafkaConsumer(
        embeddings_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        vectors: dict[str, dict[str, Any]] = {}
        while len(vectors) < len(labels):
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                for r in batch:
                    vectors[(r.key or b"").decode()] = json.loads(r.value or b"{}")
    finally:
        await consumer.stop()
    for key, record in vectors.items():
        assert record["image_sha256"] == verdicts[key][0]["image"]["sha256"]
        assert record["model_sha256"] == verdicts[key][0]["model"]["sha256"]
        vector = record["embedding"]
        assert len(vector) == 128
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3


async def test_a_decode_process_killed_mid_stream_is_replaced_and_costs_no_event(
    kafka_bootstrap: str, redis_url: str, topics: dict[str, str]
) -> None:
    env = _env(kafka_bootstrap, redis_url, topics, f"moderator-worker-{uuid.uuid4().hex[:8]}")
    env["MODERATOR_PIPELINE__DECODE_WORKERS"] = "2"
    env["MODERATOR_REDIS__ENABLED"] = "false"  # every event goes through a decode process
    service = Service(load_settings(env))
    task = asyncio.create_task(service.run())
    records, labels = _events(600, seed=41, size=64)
    watcher = await open_reader(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), [topics["verdicts"]]
    )
    try:
        await _produce(kafka_bootstrap, topics["input"], records)
        answered: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while len(answered) < 30 and loop.time() < deadline:
            for batch in [await watcher.poll(0.1)]:
                answered.update((r.key or b"").decode() for r in batch)
        assert service.decode_pool is not None
        victim = service.decode_pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert len(answered) < len(labels), "kill point missed: everything was answered"
        verdicts, dead = await _collect(kafka_bootstrap, topics, set(labels), 120)
        assert not task.done(), "the service stopped"
        assert not dead, {k: v[0]["x-error-reason"] for k, v in dead.items()}
        assert set(labels) <= set(verdicts)
        assert victim not in service.decode_pool.pids()
        replaced = service.metrics.registry.get_sample_value(
            "moderator_decode_pool_replaced_total", {"pool": "main"}
        )
        assert replaced == 1
    finally:
        await watcher.close()
        service.stop()
        assert await asyncio.wait_for(task, 60) == 0
    print(f"decode process killed after {len(answered)} of {len(labels)} verdicts: 0 lost")
