"""A flood of maximum-size inline images stays within the memory budget.

Without a byte budget, `max_in_flight` events of `max_image_bytes` each could all be held at
once (1024 × 20 MiB is 20 GiB). Here 64 records of ~5.4 MB (a 4 MiB image, base64 in JSON) are
produced as fast as the broker takes them to a service that is ready and idle: its polls could
take them all. The resident memory of the service's process tree must grow by little more than
the small budget.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from moderator import kafka
from moderator.chaos.scenarios import serve_env
from moderator.harness.fleet import Fleet, tree_rss_bytes
from moderator.settings import KafkaSettings

MAX_IMAGE_BYTES = 4 * 1024 * 1024
BUDGET_BYTES = 24 * 1024 * 1024
RECORDS = 64
# A held record costs its value, the base64 text and the image bytes (~15 MB together); decoding
# 16 M pixels grows the decode process by ~150 MB (buffers its allocator keeps). The budget lets
# ~5 records be held at once; holding all 64 would take several hundred MB more.
GROWTH_BOUND_BYTES = 300 * 1024 * 1024


def _noise_png(seed: int) -> bytes:
    """A PNG just under MAX_IMAGE_BYTES (a strip of random pixels, which do not compress) of
    16 M pixels, so each decode takes long enough for records to queue up behind it."""
    rng = random.Random(seed)
    side, rows = 4000, 320
    image = Image.new("RGB", (side, side), (40, 90, 160))
    image.paste(Image.frombytes("RGB", (side, rows), rng.randbytes(side * rows * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    data = buffer.getvalue()
    assert 0.85 * MAX_IMAGE_BYTES < len(data) <= MAX_IMAGE_BYTES, len(data)
    return data


async def _produce(settings: KafkaSettings, topic: str) -> None:
    images = [base64.b64encode(_noise_png(seed)).decode() for seed in range(4)]
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        for i in range(RECORDS):
            value = json.dumps({"id": f"flood-{i}", "image_b64": images[i % len(images)]})
            await producer.send(topic, value.encode(), key=b"%d" % i)
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_flood_of_max_size_images_stays_within_the_memory_budget(
    kafka_bootstrap: str, redis_url: str, topic_factory: Callable[..., Any], tmp_path: Path
) -> None:
    topics = {
        "input": await topic_factory(1, label="flood-in", config={"max.message.bytes": "8388608"}),
        "verdicts": await topic_factory(1, label="flood-verdicts"),
        "dlq": await topic_factory(1, label="flood-dlq"),
    }
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    env = serve_env(
        kafka_bootstrap,
        redis_url,
        topics,
        f"moderator-flood-{uuid.uuid4().hex[:8]}",
        REDIS__ENABLED="false",
        PIPELINE__MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
        PIPELINE__MEMORY_BUDGET_BYTES=str(BUDGET_BYTES),
        PIPELINE__MAX_IN_FLIGHT="1024",
        KAFKA__MAX_PARTITION_FETCH_BYTES=str(16 * 1024 * 1024),
    )
    fleet = Fleet(env, tmp_path)
    await fleet.scale(1)
    answered: set[str] = set()
    try:
        assert await fleet.wait_logged("serving", 120), fleet.log_tail()
        await asyncio.sleep(1.0)
        pid = fleet.replicas[0].pid
        idle = tree_rss_bytes(pid)
        reader = await kafka.open_reader(settings, [topics["verdicts"], topics["dlq"]])
        flood = asyncio.create_task(_produce(settings, topics["input"]))
        peak = idle
        try:
            for _ in range(1200):
                peak = max(peak, tree_rss_bytes(pid))
                for batch in [await reader.poll(0.1)]:
                    answered.update((r.key or b"").decode() for r in batch)
                if len(answered) >= RECORDS:
                    break
        finally:
            await flood
            await reader.close()
        assert fleet.restarts == 0, fleet.log_tail()
    finally:
        codes = await fleet.stop()
    assert codes == [0], fleet.log_tail()
    assert answered == {f"flood-{i}" for i in range(RECORDS)}
    growth = peak - idle
    print(
        f"flood: {RECORDS} records of ~5.4 MB (16 M pixels), budget {BUDGET_BYTES >> 20} MiB: "
        f"idle RSS {idle >> 20} MiB, peak {peak >> 20} MiB, growth {growth >> 20} MiB "
        f"(bound {GROWTH_BOUND_BYTES >> 20} MiB)"
    )
    assert growth < GROWTH_BOUND_BYTES
