"""The embedder's GPU path for binary CloudEvents: which records skip the decode process."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from PIL import Image

from moderator.errors import EventError, ModeratorError
from moderator.kafka.records import TOO_LARGE
from moderator.pipeline.budget import Hold, MemoryBudget
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.prepare import Prepared as WorkerPrepared
from moderator.pipeline.events import cloudevent_headers
from moderator.service.embedder import Embedder, GpuJpeg
from moderator.service.metrics import Metrics
from moderator.service.sensor import Sensor

_SPEC = PreprocessSpec.for_model(32, 32)


class _Record:
    def __init__(self, value: bytes, headers: list[tuple[str, bytes | None]]) -> None:
        self.topic, self.partition, self.offset, self.timestamp = "in", 0, 0, 0
        self.key, self.value, self.headers = b"k", value, headers


class _Pool:
    """Records what went to a decode process; answers as one would, without decoding."""

    def __init__(self) -> None:
        self.trips = 0

    async def run(self, call: Any, *args: Any) -> WorkerPrepared:
        self.trips += 1
        return call(*args)


def _embedder(pool: _Pool, metrics: Metrics) -> Embedder:
    return Embedder(
        spec=_SPEC,
        model_sha256="0" * 64,
        decode_pool=pool,  # type: ignore[arg-type]
        fetcher=None,  # type: ignore[arg-type]
        batcher=None,  # type: ignore[arg-type]
        budget=MemoryBudget(1 << 30),
        sensor=Sensor(metrics),
        cache=None,
        image_ttl_s=60,
        gpu_decode=True,
    )


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buffer, "JPEG")
    return buffer.getvalue()


async def _prepare(
    value: bytes, headers: list[tuple[str, bytes | None]], pool: _Pool | None = None
) -> tuple[Any, int]:
    pool = pool or _Pool()
    prepared = await _embedder(pool, Metrics()).prepare(
        _Record(value, headers),  # type: ignore[arg-type]
        Hold(MemoryBudget(1 << 30), 0),
        {},
    )
    return prepared, pool.trips


async def test_a_gpu_fit_cloudevent_is_hashed_on_the_loop_with_no_trip() -> None:
    data = _jpeg()
    prepared, trips = await _prepare(data, list(cloudevent_headers("e1", "image/jpeg", "chat")))
    assert trips == 0
    assert prepared.data == GpuJpeg(data)
    assert prepared.image_sha == hashlib.sha256(data).hexdigest()
    assert prepared.event.id == "e1"
    assert prepared.event.image_bytes is None


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xd8" + b"\xff" * 200_000,  # a header Pillow would walk for ~0.1 s
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,  # not a JPEG
    ],
)
async def test_any_other_cloudevent_goes_to_a_decode_process(value: bytes) -> None:
    pool = _Pool()
    with pytest.raises(ModeratorError):  # the decode process's own verdict on these bytes
        await _prepare(value, list(cloudevent_headers("e1", "image/jpeg")), pool)
    assert pool.trips == 1


async def test_a_bad_cloudevent_is_an_event_error() -> None:
    headers: list[tuple[str, bytes | None]] = [("ce_specversion", b"1.0")]  # no ce_id
    with pytest.raises(EventError):
        await _prepare(_jpeg(), headers)


async def test_a_stand_in_record_is_refused_before_any_parsing() -> None:
    with pytest.raises(Exception, match="inflates"):
        await _prepare(b"", [(TOO_LARGE, b"inflates past the bound")])
