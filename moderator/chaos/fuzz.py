"""Random and mutated Kafka records: the fuzz scenario's input (and the integration fuzz test's).

Each record is (key, value, headers) with header names as raw bytes, so that names which are
not UTF-8 can be sent (`moderator.kafka.raw`). The kinds mix pure noise with mutations
of valid JSON events and CloudEvents, where most of a parser's interesting paths are.
Deterministic for a given seed.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Callable

from PIL import Image

from moderator.kafka.raw import RawRecord

_HEADER_NAMES = [
    b"ce_specversion",
    b"ce_id",
    b"ce_type",
    b"ce_source",
    b"ce_surface",
    b"ce_time",
    b"content-type",
    b"x-error-reason",
    b"x-attempts",
    b"trace",
]
_ODD_TEXT = ["\ud800", "\udfff", "\x00", "\x7f", "\u202e", "é", "💥", "NaN", "-1", "", " ", "\n"]


def _image(rng: random.Random) -> bytes:
    size = rng.choice([1, 8, 32, 96])
    colour = tuple(rng.randrange(256) for _ in range(3))
    buffer = io.BytesIO()
    Image.new("RGB", (size, rng.choice([1, size, 3 * size])), colour).save(
        buffer, rng.choice(["PNG", "JPEG", "WEBP", "GIF"])
    )
    return buffer.getvalue()


def _odd(rng: random.Random) -> object:
    return rng.choice(
        [
            rng.choice(_ODD_TEXT) * rng.randrange(1, 4),
            rng.randrange(-(2**70), 2**70),
            rng.random(),
            None,
            True,
            [],
            {},
            {"nested": {"deeper": [rng.choice(_ODD_TEXT)]}},
            "x" * rng.choice([10, 300, 10_000]),
        ]
    )


def _flip(rng: random.Random, data: bytes, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _json_event(rng: random.Random, event_id: str) -> bytes:
    body: dict[str, object] = {"id": event_id, "image_b64": base64.b64encode(_image(rng)).decode()}
    for field in rng.sample(["surface", "source", "metadata", "submitted_at", "image_url"], 2):
        body[field] = _odd(rng) if rng.random() < 0.6 else "ok"
    if rng.random() < 0.3:
        body["id"] = _odd(rng)
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.2:  # literal NaN / Infinity, as some producers write
        text = text.replace('"ok"', rng.choice(["NaN", "Infinity", "-Infinity"]), 1)
    return text.encode("utf-8", "surrogatepass")


def _headers(rng: random.Random) -> list[tuple[bytes, bytes | None]]:
    headers: list[tuple[bytes, bytes | None]] = []
    for _ in range(rng.randrange(0, 5)):
        name = rng.choice(_HEADER_NAMES) if rng.random() < 0.6 else rng.randbytes(rng.randrange(8))
        value = None if rng.random() < 0.2 else rng.randbytes(rng.randrange(12))
        headers.append((name, value))
    return headers


def noise(rng: random.Random, i: int) -> RawRecord:
    return rng.randbytes(8), rng.randbytes(rng.randrange(0, 2048)), _headers(rng)


def mutated_json(rng: random.Random, i: int) -> RawRecord:
    value = _json_event(rng, f"fuzz-{i}")
    if rng.random() < 0.5:
        value = _flip(rng, value, rng.randrange(1, 6))
    if rng.random() < 0.2:
        value = value[: rng.randrange(len(value) + 1)]
    return f"fuzz-{i}".encode(), value, _headers(rng)


def valid_json(rng: random.Random, i: int) -> RawRecord:
    body = {"id": f"fuzz-{i}", "image_b64": base64.b64encode(_image(rng)).decode()}
    return f"fuzz-{i}".encode(), json.dumps(body).encode(), _headers(rng)


def cloudevent(rng: random.Random, i: int) -> RawRecord:
    headers: list[tuple[bytes, bytes | None]] = [
        (b"ce_specversion", b"1.0"),
        (b"ce_id", f"fuzz-{i}".encode()),
        (b"ce_type", b"fuzz"),
        (b"ce_source", b"fuzz"),
        (b"content-type", b"image/png"),
    ]
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(len(headers))
        name, value = headers[where]
        if rng.random() < 0.5:
            value = None if rng.random() < 0.3 else str(_odd(rng)).encode("utf-8", "surrogatepass")
        else:
            name = _flip(rng, name, 1)
        headers[where] = (name, value)
    value = _image(rng)
    if rng.random() < 0.4:
        value = _flip(rng, value, rng.randrange(1, 20))
    return None, value, headers


KINDS: dict[str, Callable[[random.Random, int], RawRecord]] = {
    "noise": noise,
    "mutated-json": mutated_json,
    "valid-json": valid_json,
    "cloudevent": cloudevent,
}


def records(seed: int, count: int) -> list[tuple[str, RawRecord]]:
    """`count` records as (kind, record), kinds in equal shares, shuffled."""
    rng = random.Random(seed)
    names = sorted(KINDS)
    out = [(names[i % len(names)], KINDS[names[i % len(names)]](rng, i)) for i in range(count)]
    rng.shuffle(out)
    return out
