"""The work a decode process does for one record when `serve` runs without a cache.

A 540 KB inline JSON event costs ~1.8 ms to parse (base64 dominates: CPython decodes it at
~300 MB/s) and 0.3 ms to hash on the 2-core machine this was measured on, all on the service's
single event loop, which with aiokafka's fetch held one process to ~145 events/s on a 16-core
GPU host. Without a cache every image gets decoded anyway, so the loop hands the record's bytes
to a decode process and gets back the parsed event without its image, the image's sha256 and
the model-ready pixels, in one trip. (With a cache the loop parses and hashes itself: a hit
must not wait for a worker; see `moderator.service.embedder`.)

Runs in worker processes: module-level, arguments and results picklable, errors the same
`ModeratorError`s (`EventError`, `TooLarge`, `DecodeError`) the loop would have raised.
`start_pool` (run by the service) starts those processes and warms them up.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from moderator.cpu import Tally
from moderator.errors import ModeratorError
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image
from moderator.pipeline.decode.resize import gpu_eligible
from moderator.pipeline.events import ImageEvent, parse_event
from moderator.types import Pixels, content_key

__all__ = [
    "Decoded",
    "Prepared",
    "decode_counted",
    "prepare_record",
    "start_pool",
    "warm_up_worker",
]

_WARM: Final = frozenset({"JPEG", "PNG"})
_START_TIMEOUT_S: Final = 120.0  # every process started and warmed within this

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A parsed record. An inline image's bytes stay in the worker: its digest and pixels come
    back instead."""

    event: ImageEvent  # image_bytes is always None here
    image_sha256: str | None  # None for a URL event: the loop fetches, hashes and decodes it
    pixels: Pixels | None  # None for a URL event, or when `jpeg` is set
    jpeg: bytes | None = None  # the image, left for the GPU to decode (`keep_jpeg`)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by stage, in the worker


@dataclass(frozen=True, slots=True)
class Decoded:
    """Pixels, with the CPU seconds by stage the decode process spent on them."""

    pixels: NDArray[np.uint8]
    cpu: dict[str, float]


def decode_counted(data: bytes, spec: PreprocessSpec) -> Decoded:
    """`decode_image` in a decode process, with its CPU by stage for the service's budget."""
    tally = Tally()
    pixels = decode_image(data, spec, tally)
    return Decoded(pixels, tally.seconds)


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
    tally = Tally()
    event = parse_event(value, headers, max_bytes=max_bytes, tally=tally)
    data = event.image_bytes
    if data is None:
        return Prepared(event, None, None, cpu=tally.seconds)
    digest = content_key(data)
    event = replace(event, image_bytes=None)
    tally.lap("hash")
    if keep_jpeg and gpu_eligible(data, spec):
        tally.lap("decode")  # the header read that found it fit
        return Prepared(event, digest, None, data, cpu=tally.seconds)
    pixels = decode_image(data, spec, tally)
    return Prepared(event, digest, pixels, cpu=tally.seconds)


def start_pool(workers: int, spec: PreprocessSpec) -> ProcessPoolExecutor:
    """A pool of `workers` decode processes, every one started and past its first JPEG and
    PNG decode; blocks (~1 s for 64). Raises `ModeratorError` if one fails.

    Why: the pool starts processes only on demand, so a fresh replica used to start them, and
    run their first decodes, while its first events waited. One warm-up task per process, each
    held at a barrier until all have one: no process is idle before the last has started, so
    none takes two.
    """
    # forkserver: forking a process that already runs ORT and aiokafka threads is unsafe.
    # The server imports the decode path once; each process forks with it loaded.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    barrier = context.Barrier(workers)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_keep, initargs=(barrier,)
    )
    try:
        for future in [pool.submit(warm_up_worker, spec) for _ in range(workers)]:
            future.result()
    except Exception as exc:  # a worker's error, a dead worker, the barrier's timeout
        pool.shutdown(wait=True, cancel_futures=True)
        raise ModeratorError(f"the decode processes failed to start: {exc!r}") from exc
    return pool


_barrier: Any = None  # set in each pool process by `start_pool`'s initializer


def _keep(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def warm_up_worker(spec: PreprocessSpec) -> int:
    """A decode process's first JPEG and PNG decodes; then, in a `start_pool` process, waits
    for the pool's other processes. Returns the process id."""
    # The model's geometry, default limits: the operator's may refuse a warm-up image.
    warm = PreprocessSpec(spec.image_size, spec.resize_shortest_edge, allowed_formats=_WARM)
    side = 2 * spec.image_size  # past the crop size: the resize runs too
    for fmt in sorted(_WARM):
        buffer = io.BytesIO()
        Image.new("RGB", (side, side * 3 // 4), (120, 90, 60)).save(buffer, fmt)
        decode_image(buffer.getvalue(), warm)
    if _barrier is not None:
        _barrier.wait(_START_TIMEOUT_S)
    return os.getpid()
