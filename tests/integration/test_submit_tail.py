"""`moderator submit` and `moderator tail` against the real broker."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image

from moderator.commands.submit import submit_images
from moderator.commands.tail import tail_topic
from moderator.pipeline.events import parse_event
from moderator.settings import load_settings


async def test_submitted_events_parse_in_every_form(
    kafka_bootstrap: str, topic_factory: Callable[..., Any], tmp_path: Path
) -> None:
    topic = await topic_factory(1, label="submit")
    settings = load_settings(
        {
            "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MODERATOR_KAFKA__INPUT_TOPIC": topic,
        }
    )
    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), "red").save(image)
    ids = await submit_images(
        settings, [str(image), "https://img.example.test/a.jpg"], surface="chat", cloudevents=False
    )
    ce_ids = await submit_images(settings, [str(image)], surface=None, cloudevents=True)

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = []
        while len(records) < 3:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    events = [parse_event(r.value, r.headers, max_bytes=10_000) for r in records]
    assert [e.id for e in events] == [*ids, *ce_ids]
    assert events[0].image_bytes == image.read_bytes()
    assert events[0].surface == "chat"
    assert events[1].image_url == "https://img.example.test/a.jpg"
    assert events[2].form == "cloudevent"
    assert events[2].image_bytes == image.read_bytes()


async def test_tail_prints_verdicts_as_a_table(
    kafka_bootstrap: str, topic_factory: Callable[..., Any]
) -> None:
    topic = await topic_factory(1, label="tail")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        verdict = {
            "id": "evt-1",
            "decision": "flag",
            "matches": [{"id": "weapons.firearm", "score": 0.31, "threshold": 0.28}],
            "top": [],
            "policy": {"version": "abc-123"},
        }
        await producer.send_and_wait(topic, json.dumps(verdict).encode(), key=b"evt-1")
        await producer.send_and_wait(topic, b"not json", key=b"evt-2")
    finally:
        await producer.stop()
    settings = load_settings(
        {
            "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MODERATOR_KAFKA__VERDICT_TOPIC": topic,
        }
    )
    out = io.StringIO()
    assert await tail_topic(settings, True, 2, False, out) == 2
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:2] == ["id", "decision"]
    assert lines[1].split()[:4] == ["evt-1", "flag", "weapons.firearm", "0.310/0.280"]
    assert "unreadable" in lines[2]
