"""`moderator demo` (what `make demo` runs): the whole service on a laptop, in about a minute.

Generates shape images, serves some of them from a local HTTP server, publishes them as events
(inline JSON, URL JSON, a binary CloudEvent) together with a few broken events, runs the real
service (in this process) against the local Kafka and Redis until every event is answered, then
prints the verdicts and dead-letter records as tables and stops the service.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

from moderator import kafka
from moderator.commands.submit import Record, publish_records
from moderator.demo.shapes import generate
from moderator.errors import ConfigError, Reason
from moderator.harness.imageserver import ImageServer
from moderator.pipeline.events import cloudevent_headers, json_event
from moderator.service.app import Service
from moderator.settings import Settings


@dataclass
class _Planned:
    """An event the demo sends and what it is, for the final table."""

    id: str
    what: str
    record: Record
    expect_dlq: Reason | None = None


@dataclass
class _Answers:
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead: dict[str, dict[str, str]] = field(default_factory=dict)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def plan_events(
    base_url: str, inline: int, by_url: int, seed: int
) -> tuple[list[_Planned], dict[str, bytes]]:
    """The demo's events: good ones in every form, plus one broken event per DLQ reason. The
    URL events' images (name → bytes) are for an `ImageServer` at `base_url` to serve."""
    run = uuid.uuid4().hex[:6]
    planned: list[_Planned] = []
    served: dict[str, bytes] = {}
    samples = list(generate(inline + by_url + 1, seed))
    for i, sample in enumerate(samples[:inline]):
        event_id = f"demo-{run}-inline-{i:02d}"
        data = _jpeg(sample.image) if i % 3 == 0 else _png(sample.image)
        record: Record = (event_id, json_event(event_id, data=data, surface="upload"), [])
        planned.append(_Planned(event_id, f"{sample.label} (inline)", record))
    for i, sample in enumerate(samples[inline : inline + by_url]):
        event_id = f"demo-{run}-url-{i:02d}"
        name = f"{i:02d}.png"
        served[name] = _png(sample.image)
        url = f"{base_url}/img/{name}"
        record = (event_id, json_event(event_id, url=url, surface="chat"), [])
        planned.append(_Planned(event_id, f"{sample.label} (url)", record))
    sample = samples[-1]
    event_id = f"demo-{run}-cloudevent"
    record = (event_id, _png(sample.image), cloudevent_headers(event_id, "image/png", "profile"))
    planned.append(_Planned(event_id, f"{sample.label} (CloudEvent)", record))

    def broken(name: str, value: bytes, reason: Reason, what: str) -> None:
        planned.append(
            _Planned(f"demo-{run}-{name}", what, (f"demo-{run}-{name}", value, []), reason)
        )

    broken("not-json", b"{this is not json", Reason.INVALID_EVENT, "value is not JSON")
    broken(
        "bad-b64",
        json.dumps({"id": f"demo-{run}-bad-b64", "image_b64": "@@@"}).encode(),
        Reason.INVALID_EVENT,
        "image_b64 is not base64",
    )
    truncated = _png(samples[0].image)[:200]
    broken(
        "truncated",
        json_event(f"demo-{run}-truncated", data=truncated),
        Reason.DECODE_ERROR,
        "truncated PNG",
    )
    broken(
        "svg",
        json_event(f"demo-{run}-svg", data=b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        Reason.UNSUPPORTED_FORMAT,
        "SVG posing as an image",
    )
    broken(
        "missing",
        json_event(f"demo-{run}-missing", url=base_url + "/no-such-image.png"),
        Reason.FETCH_FAILED,
        "URL answers 404",
    )
    broken(
        "file-url",
        json_event(f"demo-{run}-file-url", url="file:///etc/passwd"),
        Reason.FETCH_BLOCKED,
        "file:// URL",
    )
    return planned, served


async def _collect(
    reader: kafka.Reader, settings: Settings, ids: set[str], answers: _Answers
) -> None:
    while not ids <= set(answers.verdicts) | set(answers.dead):
        for record in await reader.poll(0.2):
            key = record.key.decode("utf-8", "replace") if record.key else ""
            if record.topic == settings.kafka.verdict_topic and key in ids:
                answers.verdicts[key] = json.loads(record.value or b"{}")
            elif record.topic == settings.kafka.dlq_topic and key in ids:
                answers.dead[key] = {
                    k: (v or b"").decode("utf-8", "replace") for k, v in record.headers
                }


def _print_tables(planned: list[_Planned], answers: _Answers, out: TextIO) -> int:
    problems = 0
    out.write(
        f"\n{'event':<30} {'image':<28} {'decision':<8} {'top concept':<24} score/threshold\n"
    )
    for item in planned:
        verdict = answers.verdicts.get(item.id)
        if verdict is None:
            continue
        best = (verdict.get("matches") or verdict.get("top") or [None])[0]
        concept = best["id"] if best else "-"
        figures = f"{best['score']:.3f}/{best['threshold']:.3f}" if best else ""
        decision = verdict["decision"]
        out.write(f"{item.id[-29:]:<30} {item.what:<28} {decision:<8} {concept:<24} {figures}\n")
    out.write(f"\n{'dead letter':<30} {'sent':<28} {'reason':<20} detail\n")
    for item in planned:
        headers = answers.dead.get(item.id)
        if headers is None:
            continue
        reason = headers.get("x-error-reason", "?")
        mark = "" if reason == item.expect_dlq else f"  (expected {item.expect_dlq})"
        problems += bool(mark)
        detail = headers.get("x-error-detail", "")[:70]
        out.write(f"{item.id[-29:]:<30} {item.what:<28} {reason:<20} {detail}{mark}\n")
    for item in planned:
        if item.expect_dlq and item.id in answers.verdicts:
            problems += 1
            out.write(f"unexpected verdict for {item.id}: expected DLQ {item.expect_dlq}\n")
    return problems


async def run_demo(
    settings: Settings,
    out: TextIO,
    *,
    inline: int = 24,
    by_url: int = 8,
    seed: int = 7,
    timeout_s: float = 180.0,
) -> int:
    """Run the demo; returns a process exit code (0 when every event got its expected answer)."""
    started = time.monotonic()
    with ImageServer() as server:
        planned, served = plan_events(server.base, inline, by_url, seed)
        server.images.update(served)
        await kafka.ensure_topics(
            settings.kafka,
            [settings.kafka.input_topic, settings.kafka.verdict_topic, settings.kafka.dlq_topic],
        )
        # Positioned at the end before anything is published: only this run's answers count.
        watcher = await kafka.open_reader(
            settings.kafka,
            [settings.kafka.verdict_topic, settings.kafka.dlq_topic],
            from_start=False,
        )
        service = Service(settings)
        service_task = asyncio.create_task(service.run(), name="service")
        try:
            out.write(
                f"publishing {len(planned)} events to {settings.kafka.input_topic} "
                f"({inline} inline, {by_url} by URL from {server.base}, 1 CloudEvent, "
                f"{sum(p.expect_dlq is not None for p in planned)} broken)\n"
            )
            await publish_records(settings, [p.record for p in planned])
            answers = _Answers()
            collect = asyncio.create_task(
                _collect(watcher, settings, {p.id for p in planned}, answers)
            )
            done, _ = await asyncio.wait(
                [collect, service_task], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if collect not in done:
                collect.cancel()
                if service_task in done:
                    raise ConfigError(f"the service stopped early (exit {service_task.result()})")
                raise ConfigError(f"not every event was answered within {timeout_s:.0f} s")
        finally:
            service.stop()
            code = await service_task
            await watcher.close()
    problems = _print_tables(planned, answers, out)
    elapsed = time.monotonic() - started
    out.write(
        f"\n{len(answers.verdicts)} verdicts and {len(answers.dead)} dead letters for "
        f"{len(planned)} events in {elapsed:.1f} s (service exit {code}).\n"
        "Kafka and Redis are still running: `make services-down` stops them.\n"
    )
    return 1 if problems or code else 0
