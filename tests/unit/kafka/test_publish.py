"""Every record is checked before it is sent: sizes, encodings, NaN."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from moderator.cpu import thread_cpu
from moderator.errors import PublishFailed, Reason
from moderator.kafka.fake import FakeBroker, FakeProducer
from moderator.kafka.publish import (
    Failure,
    Publisher,
    encode_json,
    record_size,
    safe_name,
    verdict_headers,
)


def _producer() -> FakeProducer:
    return FakeProducer(FakeBroker())


def _sent(producer: FakeProducer) -> list[dict[str, Any]]:
    """What reached the fake broker's verdict and dead-letter topics, in order."""
    return [
        {"topic": r.topic, "key": r.key, "value": r.value, "headers": list(r.headers)}
        for topic in ("verdicts", "dlq")
        for r in producer.broker.records(topic)
    ]


def _publisher(producer: FakeProducer, **limits: int) -> Publisher:
    return Publisher(producer, "verdicts", "dlq", limits)


class _Verdict:
    """What the publisher needs of a verdict: its JSON, and its copy without echoed fields."""

    def __init__(self, metadata: Any = None, source: str | None = "s") -> None:
        self.body: dict[str, Any] = {"id": "e", "decision": "allow"}
        self.body |= {"metadata": metadata, "source": source}

    def encoded(self) -> bytes:
        return encode_json(self.body)

    def without_echoed(self) -> _Verdict:
        dropped = [f for f in ("metadata", "source") if self.body[f] is not None]
        copy = _Verdict()
        copy.body = self.body | dict.fromkeys(dropped) | {"truncated": dropped}
        return copy


async def test_a_verdict_over_the_topic_limit_loses_its_echoed_fields() -> None:
    producer = _producer()
    publisher = _publisher(producer, verdicts=4000)
    truncated = await publisher.verdict("e", _Verdict({"blob": "x" * 5000}), [])
    assert truncated
    sent = json.loads(_sent(producer)[0]["value"])
    assert sent["metadata"] is None
    assert sent["source"] is None
    assert sent["truncated"] == ["metadata", "source"]
    assert not await publisher.verdict("e", _Verdict({"small": 1}), [])
    assert "truncated" not in json.loads(_sent(producer)[1]["value"])


async def test_nan_never_reaches_json() -> None:
    publisher = _publisher(_producer())
    with pytest.raises(ValueError, match="JSON"):
        await publisher.verdict("e", _Verdict({"x": math.nan}), [])


async def test_a_dead_letter_over_the_dlq_limit_keeps_only_its_headers() -> None:
    producer = _producer()
    publisher = _publisher(producer, dlq=10_000)
    failure = Failure(Reason.TOO_LARGE, "too big", "in", 2, 41)
    await publisher.dead_letter(b"k" * 5000, b"v" * 20_000, [("a", b"1")], failure)
    sent = _sent(producer)[0]
    assert sent["value"] is None
    assert sent["key"] == b"k" * 1024
    headers = dict(sent["headers"])
    assert "a" not in headers
    assert headers["x-error-reason"] == b"too_large"
    assert headers["x-error-detail"].startswith(b"original key, value and headers (25000 bytes)")
    assert headers["x-original-offset"] == b"41"


async def test_odd_original_headers_are_sendable() -> None:
    producer = _producer()
    failure = Failure(Reason.INVALID_EVENT, "bad \udcff detail", "in", 0, 1)
    original = [("\udcff\udcfename", b"v"), ("null-value", None)]
    await _publisher(producer).dead_letter(None, b"v", original, failure)
    headers = _sent(producer)[0]["headers"]
    assert ("\\xff\\xfename", b"v") in headers
    assert ("null-value", None) in headers
    # What aiokafka's own record builder must accept as it is.
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    assert builder.append(0, 0, None, b"v", headers) is not None


async def test_a_broker_refusal_is_publish_failed_never_a_dead_letter_reason() -> None:
    producer = _producer()
    producer.broker.fail_sends = 1
    publisher = _publisher(producer)
    with pytest.raises(PublishFailed, match="verdicts"):
        await publisher.verdict("e", _Verdict(), verdict_headers("v1", "sha"))


def test_safe_name_keeps_utf8_names() -> None:
    assert safe_name("ce_id") == "ce_id"
    assert safe_name("é") == "é"
    assert safe_name("\udcff") == "\\xff"


_text = st.text(max_size=50)
_bytes = st.none() | st.binary(max_size=300)


@settings(max_examples=200, deadline=None)
@given(_bytes, _bytes, st.lists(st.tuples(_text, _bytes), max_size=6))
def test_record_size_bounds_the_batch_kafka_receives(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    sendable = [(safe_name(k), v) for k, v in headers]
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 24)
    builder.append(0, 1_700_000_000_000, key, value, sendable)
    assert len(builder.build()) <= record_size(key, value, sendable)


async def test_a_record_with_neither_key_nor_value_can_be_dead_lettered() -> None:
    producer = _producer()
    failure = Failure(Reason.INVALID_EVENT, "empty record value", "in", 0, 9)
    await _publisher(producer).dead_letter(None, None, [], failure)
    (sent,) = producer.broker.records("dlq")
    assert sent.key is None
    assert sent.value == b""  # Kafka clients refuse a record with neither
    assert sent.header("x-original-offset") == b"9"


async def test_a_topic_over_the_producers_request_limit_is_held_to_that_limit() -> None:
    producer = _producer()
    publisher = _publisher(producer, dlq=64 * 1024 * 1024)
    failure = Failure(Reason.TOO_LARGE, "too big", "in", 0, 3)
    await publisher.dead_letter(b"k", b"v" * (17 * 1024 * 1024), [], failure)
    (sent,) = _sent(producer)
    assert sent["value"] is None  # 17 MiB would pass the topic and fail aiokafka's own check


class _SlowProducer(FakeProducer):
    """A producer whose send call waits (as aiokafka's does when its buffer is full)."""

    def __init__(self, broker: FakeBroker, wait_s: float) -> None:
        super().__init__(broker)
        self.wait_s = wait_s

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.wait_s)
        return await super().send(*args, **kwargs)


def _burn(seconds: float) -> float:
    started = thread_cpu()
    while thread_cpu() - started < seconds:
        pass
    return seconds


async def test_a_verdict_charges_its_json_and_its_send_to_the_cpu_stages() -> None:
    producer = _producer()
    cpu = {"serialize": 1.0}  # added to, not replaced
    await _publisher(producer).verdict("e", _Verdict({"k": 1}), [], cpu)
    assert set(cpu) == {"serialize", "produce"}
    assert cpu["serialize"] > 1.0
    assert cpu["produce"] > 0
    assert len(_sent(producer)) == 1


async def test_the_send_is_charged_its_own_cpu_not_what_runs_while_it_waits() -> None:
    producer = _SlowProducer(FakeBroker(), wait_s=0.05)
    cpu: dict[str, float] = {}
    burnt: list[float] = []
    asyncio.get_running_loop().call_later(0.01, lambda: burnt.append(_burn(0.1)))
    await _publisher(producer).verdict("e", _Verdict(), [], cpu)
    assert burnt  # another task's 0.1 s of CPU ran while the send waited
    assert 0 < cpu["produce"] < 0.05
    assert len(_sent(producer)) == 1


async def test_a_charged_send_passes_on_refusals_and_cancellations() -> None:
    producer = _producer()
    producer.broker.fail_sends = 1
    cpu: dict[str, float] = {}
    with pytest.raises(PublishFailed, match="verdicts"):
        await _publisher(producer).verdict("e", _Verdict(), [], cpu)
    assert cpu["produce"] > 0

    slow = _SlowProducer(FakeBroker(), wait_s=10)
    task = asyncio.create_task(_publisher(slow).verdict("e", _Verdict(), [], cpu))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _sent(slow) == []
