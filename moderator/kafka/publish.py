"""Publishing verdicts and dead-letter records, and the delivery promise they keep.

At-least-once, in three steps for every consumed record:
  1. produce its verdict (or DLQ record) with acks=all and idempotence,
  2. await the broker's acknowledgement,
  3. only then mark its offset finished; the commit loop commits the contiguous prefix.
A crash between 1 and 3 re-delivers the event, so a verdict may repeat (same id, same
decision for the same policy), but no event goes unanswered. docs/delivery.md has the cases.

Every record is checked before it is sent. A record over its topic's `max.message.bytes` is
refused by the broker, and with idempotence on that refusal leaves the producer failing every
later send to the partition; so a verdict that would be too large loses its echoed fields
(`metadata`, `source`) and says so in `truncated`, and a dead letter that would be too large
loses the original key, value and headers. NaN and Inf never reach JSON (`allow_nan=False`).

`Publisher.verdict` can charge the CPU it uses on the calling thread to a dict of
`moderator.cpu` stages: `serialize` for the JSON, `produce` for the producer's send call (its
own steps only: not the ack, nor what other tasks run while a full buffer makes it wait).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from moderator.cpu import thread_cpu
from moderator.errors import Reason
from moderator.kafka.client import DEFAULT_MAX_MESSAGE_BYTES, MAX_REQUEST_SIZE
from moderator.kafka.types import ProducerClient
from moderator.pipeline.events import now_iso

Headers = list[tuple[str, bytes]]
InHeaders = Sequence[tuple[str, bytes | None]]
_DETAIL_LIMIT = 1000  # header values stay small; the detail is for humans, the reason for code
_DLQ_KEY_LIMIT = 1024  # bytes of the original key kept when a dead letter must lose its payload
# Upper bound of what Kafka adds around one record: batch header (61 bytes), record framing
# (varints, ≤ 21), and per header two varints (≤ 10). Sizes are checked with this margin.
_BATCH_OVERHEAD = 96
_HEADER_OVERHEAD = 10
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # built once, not per record
T = TypeVar("T")


def _wire(text: str) -> bytes:
    """The bytes a str read with `surrogateescape` came from; other lone surrogates are kept
    as their (invalid) three-byte forms, for the callers to replace or escape."""
    out = bytearray()
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(code - 0xDC00)
        else:
            out += char.encode("utf-8", "surrogatepass")
    return bytes(out)


def text_bytes(text: str) -> bytes:
    """UTF-8 of any str; what is not valid UTF-8 (lone surrogates) becomes U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _wire(text).decode("utf-8", "replace").encode("utf-8")


def safe_name(name: str) -> str:
    """A header name aiokafka can send: bytes that are not UTF-8 shown as backslash escapes
    (a name read from the wire as b"\\xff" is sent as the four characters `\\xff`)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return _wire(name).decode("utf-8", "backslashreplace")
    return name


def verdict_headers(
    policy_version: str, model_sha256: str, origin: tuple[str, int, int] | None = None
) -> Headers:
    """A verdict's headers; `origin` (topic, partition, offset of the input record) traces it
    back to the record it answers, as a dead letter's `x-original-*` headers do."""
    headers = list(_verdict_head(policy_version, model_sha256))
    if origin is not None:
        topic, partition, offset = origin
        headers += [
            ("x-original-topic", topic.encode()),
            ("x-original-partition", str(partition).encode()),
            ("x-original-offset", str(offset).encode()),
        ]
    return headers


@lru_cache(maxsize=64)
def _verdict_head(policy_version: str, model_sha256: str) -> tuple[tuple[str, bytes], ...]:
    """The headers every verdict of one policy version and model carries."""
    return (
        ("content-type", b"application/json"),
        ("x-policy-version", policy_version.encode()),
        ("x-model-sha256", model_sha256.encode()),
    )


def dlq_headers(
    original: InHeaders,
    *,
    reason: Reason,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    attempts: int,
) -> Headers:
    """The original headers plus the `x-` fields a DLQ consumer switches on. Original names
    that are not UTF-8 are escaped; null values stay null."""
    headers: list[tuple[str, Any]] = [
        (safe_name(k), v) for k, v in original if not k.startswith("x-error-") and k != "x-attempts"
    ]
    headers += [
        ("x-error-reason", reason.value.encode()),
        ("x-error-detail", text_bytes(detail[:_DETAIL_LIMIT])),
        ("x-original-topic", topic.encode()),
        ("x-original-partition", str(partition).encode()),
        ("x-original-offset", str(offset).encode()),
        ("x-attempts", str(attempts).encode()),
        ("x-failed-at", now_iso().encode()),
    ]
    return headers


@dataclass(frozen=True, slots=True)
class Failure:
    """Why and where a record failed: what its dead letter's `x-` headers say."""

    reason: Reason
    detail: str
    topic: str
    partition: int
    offset: int
    attempts: int = 1

    def headers(self, original: InHeaders, note: str = "") -> Headers:
        return dlq_headers(
            original,
            reason=self.reason,
            detail=note + self.detail,
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            attempts=self.attempts,
        )


class VerdictLike(Protocol):
    """A verdict as publishing sees it (`moderator.service.verdict.Verdict` is one)."""

    def encoded(self) -> bytes:
        """The record's value: compact JSON, as `encode_json` writes it; raises ValueError on
        NaN or Inf."""
        ...

    def without_echoed(self) -> VerdictLike:
        """A copy without the fields echoed from the event, naming them in `truncated`."""
        ...


def record_size(key: bytes | None, value: bytes | None, headers: InHeaders) -> int:
    """A record's size on the wire as a batch of one, uncompressed, rounded up."""
    fields = sum(len(text_bytes(k)) + len(v or b"") + _HEADER_OVERHEAD for k, v in headers)
    return len(key or b"") + len(value or b"") + fields + _BATCH_OVERHEAD


def encode_json(record: dict[str, Any]) -> bytes:
    """Compact JSON; raises ValueError on NaN or Inf rather than writing invalid JSON."""
    return _JSON.encode(record).encode("utf-8")


def _charge(cpu: dict[str, float], stage: str, started: float) -> None:
    cpu[stage] = cpu.get(stage, 0.0) + (thread_cpu() - started)


class _Charged(Awaitable[T]):
    """Awaits a coroutine, charging to `cpu[stage]` the CPU of its own steps only: while it
    is suspended, the loop runs other tasks, and their CPU is theirs."""

    __slots__ = ("_coro", "_cpu", "_stage")

    def __init__(self, coro: Coroutine[Any, Any, T], cpu: dict[str, float], stage: str) -> None:
        self._coro, self._cpu, self._stage = coro, cpu, stage

    def __await__(self) -> Generator[Any, Any, T]:
        coro, cpu, stage = self._coro, self._cpu, self._stage
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            started = thread_cpu()
            try:
                yielded = coro.send(sent) if thrown is None else coro.throw(thrown)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            finally:
                _charge(cpu, stage, started)
            try:
                sent, thrown = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, thrown in by the task: pass it on
                sent, thrown = None, exc


class Publisher:
    """Sends and awaits acks; callers mark offsets finished only after these return.

    `limits` maps topic → max.message.bytes (Kafka's default for topics not named)."""

    def __init__(
        self,
        producer: ProducerClient,
        verdict_topic: str,
        dlq_topic: str,
        limits: dict[str, int] | None = None,
    ) -> None:
        self._producer = producer
        self._verdict_topic = verdict_topic
        self._dlq_topic = dlq_topic
        self._limits = limits or {}

    def limit(self, topic: str) -> int:
        """The largest record `topic` takes from us: its max.message.bytes, and never more
        than the producer's own max_request_size."""
        topic_limit = self._limits.get(topic, DEFAULT_MAX_MESSAGE_BYTES)
        return min(topic_limit, MAX_REQUEST_SIZE)

    async def verdict(
        self,
        key: str,
        verdict: VerdictLike,
        headers: Headers,
        cpu: dict[str, float] | None = None,
    ) -> bool:
        """Send a verdict; returns True if its echoed fields had to be dropped to fit. With
        `cpu`, adds this thread's CPU to its `serialize` and `produce` stages."""
        started = thread_cpu() if cpu is not None else 0.0
        try:
            raw_key = text_bytes(key)
            value = verdict.encoded()
            limit = self.limit(self._verdict_topic)
            truncated = record_size(raw_key, value, headers) > limit
            if truncated:
                value = verdict.without_echoed().encoded()
                if record_size(raw_key, value, headers) > limit:
                    raise ValueError(
                        f"verdict is {len(value)} bytes without its echoed fields; the topic "
                        f"{self._verdict_topic} takes {limit}"
                    )
        finally:
            if cpu is not None:
                _charge(cpu, "serialize", started)
        await self._send(self._verdict_topic, raw_key, value, headers, cpu)
        return truncated

    async def dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        original: InHeaders,
        failure: Failure,
    ) -> None:
        """Dead-letter a record with `failure`'s headers added; over the DLQ topic's limit the
        original key, value and headers are dropped, and the detail says so."""
        full = failure.headers(original)
        if record_size(key, value, full) <= self.limit(self._dlq_topic):
            await self._send(self._dlq_topic, key, value, full)
            return
        size = len(key or b"") + len(value or b"")
        note = f"original key, value and headers ({size} bytes) dropped: over the DLQ limit; "
        await self.bare_dead_letter(key, failure, note)

    async def bare_dead_letter(self, key: bytes | None, failure: Failure, note: str) -> None:
        """A dead letter with only the failure's headers and (the start of) the key: for
        records whose own bytes cannot be sent."""
        short_key = (key or b"")[:_DLQ_KEY_LIMIT] or None
        await self._send(self._dlq_topic, short_key, None, failure.headers([], note))

    async def embedding(self, topic: str, key: str, record: dict[str, Any]) -> None:
        value = encode_json(record)
        raw_key = text_bytes(key)
        if record_size(raw_key, value, []) > self.limit(topic):
            raise ValueError(f"embedding record is {len(value)} bytes; {topic} takes less")
        await self._send(topic, raw_key, value, [])

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: InHeaders,
        cpu: dict[str, float] | None = None,
    ) -> None:
        send = self._producer.send(topic, value, key=key, headers=headers)
        ack = await (send if cpu is None else _Charged(send, cpu, "produce"))
        await ack
