"""The work a decode process does for one record when `serve` runs without a cache.

A 540 KB inline JSON event costs ~1.8 ms to parse (base64 dominates: CPython decodes it at
~300 MB/s) and 0.3 ms to hash on the 2-core machine this was measured on, all on the service's
single event loop, which with aiokafka's fetch held one process to ~145 events/s on a 16-core
GPU host. Without a cache every image gets decoded anyway, so the loop hands the record's bytes
to a decode process and gets back the parsed event without its image, the image's sha256 and
the model-ready pixels, in one trip. (With a cache the loop parses and hashes itself: a hit
must not wait for a worker; see `Service._prepare`.)

Runs in worker processes: module-level, arguments and results picklable, errors the same
`ModeratorError`s (`EventError`, `TooLarge`, `DecodeError`) the loop would have raised.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from PIL import Image

from moderator.decode import PreprocessSpec, decode_image
from moderator.decode_gpu import gpu_eligible
from moderator.events import ImageEvent, parse_event
from moderator.types import Pixels

__all__ = ["Prepared", "prepare_record", "warm_up_worker"]

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A parsed record. An inline image's bytes stay in the worker: its digest and pixels come
    back instead."""

    event: ImageEvent  # image_bytes is always None here
    image_sha256: str | None  # None for a URL event: the loop fetches, hashes and decodes it
    pixels: Pixels | None  # None for a URL event, or when `jpeg` is set
    jpeg: bytes | None = None  # the image, left for the GPU to decode (`keep_jpeg`)


def prepare_record(
    value: bytes | None,
    headers: Headers,
    *,
    max_bytes: int,
    spec: PreprocessSpec,
    keep_jpeg: bool = False,
) -> Prepared:
    """Parse one record; for an inline image also hash and decode it. With `keep_jpeg`, a
    JPEG the GPU decoder takes (`gpu_eligible`) comes back undecoded instead."""
    event = parse_event(value, headers, max_bytes=max_bytes)
    data = event.image_bytes
    if data is None:
        return Prepared(event, None, None)
    digest = hashlib.sha256(data).hexdigest()
    event = replace(event, image_bytes=None)
    if keep_jpeg and gpu_eligible(data, spec):
        return Prepared(event, digest, None, data)
    return Prepared(event, digest, decode_image(data, spec))


def warm_up_worker(spec: PreprocessSpec) -> int:
    """A decode process's first JPEG and PNG decodes, run once per process when `serve` starts;
    returns the process id.

    Why: the pool starts its processes on demand, and a process's first decode loads codec
    state. A fresh replica met both on its first events: at half load on an H100 host the first
    second's events waited 1.2 s at the median (bench e2e, eighth lease).
    """
    side = 2 * spec.image_size  # past the crop size: the resize path runs too
    warm = replace(spec, allowed_formats=frozenset({"JPEG", "PNG"}))  # whatever is allowed
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.new("RGB", (side, side * 3 // 4), (120, 90, 60)).save(buffer, fmt)
        decode_image(buffer.getvalue(), warm)
    return os.getpid()
