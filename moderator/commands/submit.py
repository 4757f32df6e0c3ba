"""`moderator submit`: publish image events in the documented forms, for producer teams."""

from __future__ import annotations

import mimetypes
import uuid
from pathlib import Path

from moderator import kafka
from moderator.errors import ConfigError
from moderator.pipeline.events import cloudevent_headers, json_event
from moderator.settings import Settings

Record = tuple[str, bytes, list[tuple[str, bytes]]]


def build_records(images: list[str], *, surface: str | None, cloudevents: bool) -> list[Record]:
    """One (key, value, headers) per file or URL, with a fresh event id each."""
    records: list[Record] = []
    for image in images:
        event_id = uuid.uuid4().hex
        if image.startswith(("http://", "https://")):
            records.append((event_id, json_event(event_id, url=image, surface=surface), []))
            continue
        path = Path(image)
        if not path.is_file():
            raise ConfigError(f"{image}: not a file or an http(s) URL")
        data = path.read_bytes()
        if cloudevents:
            ctype = mimetypes.guess_type(path.name)[0] or "image/jpeg"
            records.append((event_id, data, cloudevent_headers(event_id, ctype, surface)))
        else:
            records.append((event_id, json_event(event_id, data=data, surface=surface), []))
    return records


async def publish_records(settings: Settings, records: list[Record]) -> None:
    """Send to the input topic and wait for every ack."""
    producer = kafka.Producer(settings.kafka)
    await producer.start()
    try:
        sends = [
            await producer.send(
                settings.kafka.input_topic, value, key=key.encode(), headers=headers
            )
            for key, value, headers in records
        ]
        for sent in sends:
            await sent
    finally:
        await producer.stop()


async def submit_images(
    settings: Settings, images: list[str], *, surface: str | None, cloudevents: bool
) -> list[str]:
    """Publish one event per file or URL; returns the generated event ids, in order."""
    records = build_records(images, surface=surface, cloudevents=cloudevents)
    await publish_records(settings, records)
    return [key for key, _, _ in records]
