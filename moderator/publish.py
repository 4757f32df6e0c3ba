"""Publishing verdicts and dead-letter records, and the delivery promise they keep.

At-least-once, in three steps for every consumed record:
  1. produce its verdict (or DLQ record) with acks=all and idempotence,
  2. await the broker's acknowledgement,
  3. only then mark its offset finished; the commit loop commits the contiguous prefix.
A crash between 1 and 3 re-delivers the event, so a verdict may repeat (same id, same
decision for the same policy), but no event goes unanswered. docs/delivery.md has the cases.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from moderator.errors import Reason

Headers = list[tuple[str, bytes]]
_DETAIL_LIMIT = 1000  # header values stay small; the detail is for humans, the reason for code


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verdict_headers(policy_version: str, model_sha256: str) -> Headers:
    return [
        ("content-type", b"application/json"),
        ("x-policy-version", policy_version.encode()),
        ("x-model-sha256", model_sha256.encode()),
    ]


def dlq_headers(
    original: Sequence[tuple[str, bytes]],
    *,
    reason: Reason,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    attempts: int,
) -> Headers:
    """The original headers plus the `x-` fields a DLQ consumer switches on."""
    headers = [(k, v) for k, v in original if not k.startswith("x-error-") and k != "x-attempts"]
    headers += [
        ("x-error-reason", reason.value.encode()),
        ("x-error-detail", detail[:_DETAIL_LIMIT].encode("utf-8", "replace")),
        ("x-original-topic", topic.encode()),
        ("x-original-partition", str(partition).encode()),
        ("x-original-offset", str(offset).encode()),
        ("x-attempts", str(attempts).encode()),
        ("x-failed-at", now_iso().encode()),
    ]
    return headers


class Publisher:
    """Sends and awaits acks; callers mark offsets finished only after these return."""

    def __init__(self, producer: AIOKafkaProducer, verdict_topic: str, dlq_topic: str) -> None:
        self._producer = producer
        self._verdict_topic = verdict_topic
        self._dlq_topic = dlq_topic

    async def verdict(self, key: str, verdict: dict[str, Any], headers: Headers) -> None:
        value = json.dumps(verdict, separators=(",", ":")).encode()
        await (
            await self._producer.send(self._verdict_topic, value, key=key.encode(), headers=headers)
        )

    async def dead_letter(self, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        await (await self._producer.send(self._dlq_topic, value, key=key, headers=headers))

    async def embedding(self, topic: str, key: str, record: dict[str, Any]) -> None:
        value = json.dumps(record, separators=(",", ":")).encode()
        await (await self._producer.send(topic, value, key=key.encode()))
