"""`moderator tail`: follow the verdict or dead-letter topic as a readable table."""

from __future__ import annotations

import json
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
    # No group: tailing must never move, or join in, the service's committed offsets.
    reader = await kafka.open_reader(settings.kafka, [topic], from_start=from_beginning)
    printed = 0
    header = (
        f"{'id':<36} {'reason':<20} detail"
        if dlq
        else f"{'id':<36} {'decision':<7} {'concept score/threshold':<44} policy"
    )
    out.write(header + "\n")
    try:
        while limit is None or printed < limit:
            for record in await reader.poll(0.5):
                if dlq:
                    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
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
        await reader.close()
    return printed
