"""`moderator tail`: follow the verdict or dead-letter topic as a readable table."""

from __future__ import annotations

import json
import uuid
from typing import Any, TextIO

from moderator import kafka
from moderator.settings import Settings


def verdict_row(value: dict[str, Any]) -> str:
    matches = value.get("matches") or []
    top = value.get("top") or []
    best = matches[0] if matches else (top[0] if top else None)
    concept = f"{best['id']} {best['score']:.3f}/{best['threshold']:.3f}" if best else "-"
    policy = value.get("policy", {}).get("version", "")
    return f"{value.get('id', '?')[:36]:<36} {value.get('decision', '?'):<7} {concept:<44} {policy}"


def dlq_row(key: bytes | None, headers: dict[str, str]) -> str:
    ident = key.decode("utf-8", "replace") if key else "-"
    reason = headers.get("x-error-reason", "?")
    detail = headers.get("x-error-detail", "")
    return f"{ident[:36]:<36} {reason:<20} {detail[:80]}"


async def tail_topic(
    settings: Settings, from_beginning: bool, limit: int | None, dlq: bool, out: TextIO
) -> int:
    """Print records as they arrive; returns how many were printed."""
    topic = settings.kafka.dlq_topic if dlq else settings.kafka.verdict_topic
    # A throwaway group: tailing must never move the service's committed offsets.
    consumer = kafka.make_consumer(
        settings.kafka,
        topic,
        group_id=f"moderator-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    printed = 0
    header = (
        f"{'id':<36} {'reason':<20} detail"
        if dlq
        else f"{'id':<36} {'decision':<7} {'concept score/threshold':<44} policy"
    )
    out.write(header + "\n")
    try:
        async for record in consumer:
            if dlq:
                headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
                out.write(dlq_row(record.key, headers) + "\n")
            else:
                try:
                    out.write(verdict_row(json.loads(record.value or b"{}")) + "\n")
                except (json.JSONDecodeError, KeyError, TypeError):
                    out.write(f"(unreadable record at offset {record.offset})\n")
            out.flush()
            printed += 1
            if limit is not None and printed >= limit:
                break
    finally:
        await consumer.stop()
    return printed
