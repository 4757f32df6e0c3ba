"""From a consumed record to its image's embedding: parse, acquire, hash, then the cache or
decode → batch → embed.

Two ways to prepare a record, chosen by whether a cache is configured:
- without a cache every image is decoded anyway, so an inline record goes to a decode process
  once, for parsing, hashing and decoding: base64, JSON and sha256 of large records stay off
  the event loop (its CPU per event halves);
- with a cache the loop parses and hashes itself, so a hit costs no worker trip and a miss no
  second parse (measured on 2 cores, a worker trip cost 28 % of verdicts/s when every image
  missed and 21 % with repeats).
With GPU decoding on, a JPEG the GPU decoder takes is embedded from its bytes with its batch;
one it refuses (`NotDecoded`) is decoded on the CPU instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from moderator.cache.keys import EmbeddingCache, content_key, image_namespace
from moderator.cpu import Tally
from moderator.errors import EventError, InvalidEmbedding, TooLarge
from moderator.kafka import records
from moderator.kafka.types import Record
from moderator.pipeline.acquire.fetch import Fetcher
from moderator.pipeline.batch import Batcher, Embedded, NotDecoded
from moderator.pipeline.budget import Hold, MemoryBudget
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.pool import DecodePool
from moderator.pipeline.decode.prepare import decode_counted, prepare_record
from moderator.pipeline.decode.resize import gpu_eligible, header_is_short
from moderator.pipeline.events import ImageEvent, is_cloudevent, parse_event
from moderator.service.sensor import Sensor
from moderator.types import Pixels

# JSON around an inline image: the id, metadata (≤ 64 KiB as JSON, up to 6× when escaped)
# and the other fields. A record value over base64(limit) plus this is refused unparsed.
_JSON_ENVELOPE_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class GpuJpeg:
    """Image bytes a decode process already found fit for the GPU decoder (`gpu_eligible`)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Prepared:
    """A parsed record with its image: pixels, or bytes still to decode."""

    event: ImageEvent
    image_sha: str
    pixels: Pixels | None
    data: bytes | GpuJpeg | None
    attempts: int  # fetch attempts; reported in a dead letter's x-attempts


class Embedder:
    """Records in, embeddings out. Stateless per event: one instance serves every task."""

    def __init__(
        self,
        *,
        spec: PreprocessSpec,
        model_sha256: str,
        decode_pool: DecodePool,
        fetcher: Fetcher,
        batcher: Batcher,
        budget: MemoryBudget,
        sensor: Sensor,
        cache: EmbeddingCache | None,
        image_ttl_s: int,
        gpu_decode: bool,
    ) -> None:
        self._spec = spec
        self._namespace = image_namespace(model_sha256, spec)
        self._pool = decode_pool
        self._fetcher = fetcher
        self._batcher = batcher
        self._budget = budget
        self._sensor = sensor
        self._cache = cache
        self._image_ttl_s = image_ttl_s
        self._gpu = gpu_decode

    async def prepare(self, record: Record, hold: Hold, timings: dict[str, float]) -> Prepared:
        """Parse, acquire and hash one record; raises what makes a dead letter."""
        max_bytes = self._spec.max_bytes
        for name, why in record.headers:  # stand-ins for batches `records` could not read
            if name == records.TOO_LARGE:
                raise TooLarge((why or b"").decode("utf-8", "replace"))
            if name == records.UNREADABLE:
                raise EventError((why or b"").decode("utf-8", "replace"))
        size = len(record.value or b"")
        if size > max_bytes * 4 // 3 + _JSON_ENVELOPE_BYTES:
            raise TooLarge(
                f"record value is {size} bytes: over any event with a {max_bytes}-byte image"
            )
        if self._cache is None and self._gpu and is_cloudevent(record.headers):
            gpu_ready = self._gpu_cloudevent(record)
            if gpu_ready is not None:
                return gpu_ready
        if self._cache is None:
            t = time.monotonic()
            prepared = await self._pool.run(
                partial(
                    prepare_record,
                    record.value,
                    list(record.headers),
                    max_bytes=max_bytes,
                    spec=self._spec,
                    keep_jpeg=self._gpu,
                )
            )
            # Its own stage: waiting for a worker, parsing, hashing and decoding.
            self._time(timings, "prepare", t)
            self._sensor.on_cpu_tally(prepared.cpu, "worker")
            event = prepared.event
            if prepared.image_sha256 is not None:
                jpeg = None if prepared.jpeg is None else GpuJpeg(prepared.jpeg)
                return Prepared(event, prepared.image_sha256, prepared.pixels, jpeg, 1)
        else:
            event = parse_event(record.value, record.headers, max_bytes=max_bytes)
        data, attempts = await self._acquire(event, hold, timings)
        return Prepared(event, content_key(data), None, data, attempts)

    def _gpu_cloudevent(self, record: Record) -> Prepared | None:
        """A binary CloudEvent whose value is a JPEG the GPU decoder takes: parsed and hashed
        here, with no trip to a decode process (which would only send the bytes back).
        None for any other image, which takes the usual path."""
        tally = Tally()
        event = parse_event(
            record.value, record.headers, max_bytes=self._spec.max_bytes, tally=tally
        )
        data = event.image_bytes
        ready = None
        # Only a header that ends within a few segments is read here (`header_is_short`);
        # any other goes to a decode process, as a JSON event does.
        fit = data is not None and header_is_short(data) and gpu_eligible(data, self._spec)
        tally.lap("decode")  # the header read
        if fit and data is not None:
            digest = content_key(data)
            tally.lap("hash")
            ready = Prepared(replace(event, image_bytes=None), digest, None, GpuJpeg(data), 1)
        self._sensor.on_cpu_tally(tally.seconds, "loop")
        return ready

    async def embed(self, prepared: Prepared, timings: dict[str, float]) -> tuple[np.ndarray, bool]:
        """(embedding, from the cache?): cached, or decoded as needed and embedded in a batch."""
        if self._cache is not None:
            hit = (await self._cache.get_many(self._namespace, [prepared.image_sha]))[0]
            if hit is not None:  # the cache serves only finite unit vectors of `dim`
                return hit, True
        embedded = await self._embed_image(prepared.pixels, prepared.data, timings)
        timings["queue"] = embedded.queued_s
        timings["inference"] = embedded.inference_s
        if not np.isfinite(embedded.embedding).all():
            raise InvalidEmbedding("the model's embedding of this image holds NaN or Inf")
        if self._cache is not None:
            await self._cache.set_many(
                self._namespace, {prepared.image_sha: embedded.embedding}, self._image_ttl_s
            )
        return embedded.embedding, False

    async def _acquire(
        self, event: ImageEvent, hold: Hold, timings: dict[str, float]
    ) -> tuple[bytes, int]:
        if event.image_bytes is not None:
            return event.image_bytes, 1
        assert event.image_url is not None  # an event has inline bytes or a URL
        t = time.monotonic()
        # The download may bring max_image_bytes: that much must fit the budget first. Once
        # it is here, the event holds what it brought until it is answered.
        async with self._budget.reserve(self._spec.max_bytes):
            fetched = await self._fetcher.fetch(event.image_url)
        hold.add(len(fetched.data))
        self._time(timings, "acquire", t)
        return fetched.data, fetched.attempts

    async def _embed_image(
        self, pixels: Pixels | None, data: bytes | GpuJpeg | None, timings: dict[str, float]
    ) -> Embedded:
        if pixels is None:
            assert data is not None  # `prepare` gives pixels, bytes, or both
            if isinstance(data, GpuJpeg):
                data, gpu = data.data, True
            else:  # fetched, or parsed on the loop: not looked at yet
                gpu = self._gpu and header_is_short(data) and gpu_eligible(data, self._spec)
            if gpu:
                try:
                    embedded = await self._batcher.embed_encoded(data)
                except NotDecoded:
                    self._sensor.on_decode("gpu_refused")
                else:
                    self._sensor.on_decode("gpu")
                    return embedded
            t = time.monotonic()
            decoded = await self._pool.run(decode_counted, data, self._spec)
            self._time(timings, "decode", t)
            self._sensor.on_cpu_tally(decoded.cpu, "worker")
            pixels = decoded.pixels
        self._sensor.on_decode("cpu")
        return await self._batcher.embed(pixels)

    def _time(self, timings: dict[str, float], stage: str, started: float) -> None:
        timings[stage] = time.monotonic() - started
        self._sensor.on_stage(stage, timings[stage])
