"""The strong peer of `bench e2e`: the consumer a competent engineer writes in a day.

The naive peer's model, policy and loop, but a batch of up to 64 records at a time: URLs
fetched concurrently, the JPEGs decoded in one nvJPEG call (torchvision, else torchcodec; other
formats and CPU runs through their CPU decoders, PIL last), resize and crop on the device, the
vision tower in fp16 under `torch.compile` (warmed up before ready, so compiling is not timed).
All of a batch is answered, the acks awaited, then its offsets committed.

A record that cannot be parsed, fetched or decoded is answered with an `error` and no
`decision` on the verdict topic (the naive peer would crash on it), so one bad event neither
stops the loop nor leaves the bench waiting. Takes the naive peer's arguments, plus
`--compile/--no-compile` (default: compile on CUDA only).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from numpy.typing import NDArray
from PIL import Image

from moderator.bench.naive import NaiveConfig, NaivePeer, config_fields, peer_arguments, run_peer
from moderator.errors import ConfigError

__all__ = ["STRONG_BATCH", "Event", "Spec", "StrongConfig", "StrongPeer", "decode", "main"]

STRONG_BATCH = 64
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class StrongConfig(NaiveConfig):
    batch: int = STRONG_BATCH
    compile: bool | None = None  # None: compile on CUDA, not on CPU


@dataclass(frozen=True)
class Event:
    """A record's image to moderate (`data` inline, or `url` to fetch), or why it can't be."""

    id: str
    surface: str | None = None
    data: bytes | None = None
    url: str | None = None
    error: str | None = None


def parse(record: ConsumerRecord[bytes, bytes]) -> Event:
    """A binary CloudEvent (ce_id header, image bytes as value) or a JSON event; never raises."""
    headers = {k.lower(): v for k, v in record.headers or () if isinstance(k, str) and v}
    fallback = f"{record.topic}-{record.partition}@{record.offset}"
    if "ce_id" in headers or "ce_specversion" in headers:
        ce_id = headers.get("ce_id", b"").decode("utf-8", "replace") or fallback
        surface = headers.get("ce_surface")
        if not record.value:
            return Event(ce_id, error="CloudEvent without image bytes")
        return Event(ce_id, surface.decode("utf-8", "replace") if surface else None, record.value)
    try:
        event = json.loads(record.value or b"")
    except (ValueError, RecursionError) as exc:
        return Event(fallback, error=f"not JSON: {str(exc)[:200]}")
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        return Event(fallback, error="not a JSON object with a string id")
    event_id, surface = event["id"], event.get("surface")
    surface = surface if isinstance(surface, str) else None
    if isinstance(event.get("image_b64"), str):
        try:
            return Event(event_id, surface, base64.b64decode(event["image_b64"], validate=True))
        except (binascii.Error, ValueError):
            return Event(event_id, surface, error="image_b64 is not base64")
    if isinstance(event.get("image_url"), str):
        return Event(event_id, surface, url=event["image_url"])
    return Event(event_id, surface, error="neither image_b64 nor image_url")


# --- decoding -------------------------------------------------------------------------------

Decoders = tuple[Callable[[list[Any], str], list[Any]] | None, Callable[[Any], Any] | None]


@cache
def _decoders() -> Decoders:
    """(batched JPEG decoder, any-format CPU decoder) from torchvision, else torchcodec, else
    (None, None): then PIL decodes everything."""
    try:
        from torchvision.io import (  # type: ignore[import-not-found, unused-ignore]
            ImageReadMode,
            decode_image,
            decode_jpeg,
        )
    except ImportError:
        pass
    else:
        rgb = ImageReadMode.RGB
        return (
            lambda tensors, device: list(decode_jpeg(tensors, mode=rgb, device=device)),
            lambda tensor: decode_image(tensor, mode=rgb),
        )
    try:
        import torchcodec.decoders
    except ImportError:
        return None, None
    codec: Any = torchcodec.decoders
    return (
        lambda tensors, device: list(codec.decode_jpeg(tensors, mode="RGB", device=device)),
        lambda tensor: codec.decode_image(tensor, mode="RGB"),
    )


def _pil(data: bytes) -> Any:
    import torch

    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def _as_tensor(data: bytes) -> Any:
    import torch

    with warnings.catch_warnings():  # the decoders only read it
        warnings.filterwarnings("ignore", "The given buffer is not writable")
        return torch.frombuffer(data, dtype=torch.uint8)


def _one(data: bytes, image: Callable[[Any], Any] | None) -> Any:
    """One image to a CPU (3, h, w) uint8 tensor: the torch decoder, else PIL; None if neither."""
    import torch

    if image is not None:
        with contextlib.suppress(Exception):
            out = image(_as_tensor(data))
            if out.dtype == torch.uint8 and out.shape[0] == 3:
                return out
    try:
        return _pil(data)
    except Exception:  # an undecodable image is answered, not fatal
        return None


def decode(blobs: Sequence[bytes], device: str, decoders: Decoders | None = None) -> list[Any]:
    """Encoded images → (3, h, w) uint8 tensors on `device`, None where one does not decode.

    Off the CPU (CUDA: nvJPEG) the JPEGs are decoded in one batched call on the device; if
    that call fails (one bad JPEG fails the batch), they are decoded one by one on the CPU.
    """
    jpeg, image = decoders if decoders is not None else _decoders()
    out: list[Any] = [None] * len(blobs)
    rest = list(range(len(blobs)))
    if device != "cpu" and jpeg is not None:
        jpegs = [i for i in rest if blobs[i][:3] == _JPEG_MAGIC]
        rest = [i for i in rest if blobs[i][:3] != _JPEG_MAGIC]
        try:
            decoded = jpeg([_as_tensor(blobs[i]) for i in jpegs], device) if jpegs else []
            for i, tensor in zip(jpegs, decoded, strict=True):
                out[i] = tensor
        except Exception:  # one bad JPEG fails the batch: one by one below
            rest += jpegs
    for i in rest:
        tensor = _one(blobs[i], image)
        out[i] = None if tensor is None else tensor.to(device, non_blocking=True)
    return out


# --- preprocessing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """CLIP's preprocessing, read from the checkpoint's image processor."""

    shortest_edge: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def preprocess(images: Sequence[Any], spec: Spec, dtype: Any) -> Any:
    """(3, h, w) uint8 tensors on one device → one normalized (n, 3, crop, crop) batch.

    Shortest side to `spec.shortest_edge` (bicubic, antialiased; the long side truncated as
    HF does), centre crop, CLIP mean/std. Images of one size are resized in one call.
    """
    import torch
    import torch.nn.functional as F

    device = images[0].device
    size = spec.crop
    out = torch.empty((len(images), 3, size, size), dtype=dtype, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(i)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255
    for (h, w), members in groups.items():
        edge = spec.shortest_edge
        new_h, new_w = (int(edge * h / w), edge) if w <= h else (edge, int(edge * w / h))
        batch = torch.stack([images[i] for i in members]).float()
        resized = F.interpolate(batch, size=(new_h, new_w), mode="bicubic", antialias=True)
        resized = resized.clamp_(0, 255)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        crop = resized[:, :, top : top + size, left : left + size]
        out[torch.tensor(members, device=device)] = ((crop - mean) / std).to(dtype)
    return out


# --- the peer -------------------------------------------------------------------------------


class StrongPeer(NaivePeer):
    """The naive peer's model and policy; batched decode, device preprocessing, compile."""

    def __init__(self, config: StrongConfig) -> None:
        super().__init__(config)
        torch = self._torch
        processor = self.processor.image_processor
        self.spec = Spec(
            int(processor.size["shortest_edge"]),
            int(processor.crop_size["height"]),
            tuple(processor.image_mean),
            tuple(processor.image_std),
        )
        if self.spec.shortest_edge < self.spec.crop:
            raise ConfigError(f"{config.checkpoint}: resize edge below the crop is not handled")
        use_compile = config.compile if config.compile is not None else self.device == "cuda"
        self._embed: Callable[[Any], Any] = (
            torch.compile(self._features) if use_compile else self._features
        )
        self.compiled = use_compile
        # One thread does all torch work: the event loop stays free for Kafka (heartbeats,
        # prefetching the next batch) and compiled graphs always run where they were warmed.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="strong-torch")
        self._worker.submit(self._warm_up, config.batch).result()

    def _features(self, pixels: Any) -> Any:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        embeds = self.model.visual_projection(pooled)
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def _warm_up(self, batch: int) -> None:
        """nvJPEG, cuDNN and the compiled graphs set up before ready: 1 and 2 images, then
        half and full batches (after the second size the graph is dynamic in the batch)."""
        buffer = io.BytesIO()
        Image.new("RGB", (320, 240), (90, 120, 30)).save(buffer, format="JPEG")
        for n in sorted({1, 2, max(1, batch // 2), batch}):
            self.embed_blobs([buffer.getvalue()] * n)

    def embed_blobs(self, blobs: Sequence[bytes]) -> tuple[NDArray[np.float32], list[int]]:
        """Encoded images → unit embeddings of those that decode, and their indices."""
        torch = self._torch
        with torch.inference_mode():
            decoded = decode(blobs, self.device)
            ok = [i for i, image in enumerate(decoded) if image is not None]
            if not ok:
                return np.zeros((0, 0), np.float32), []
            pixels = preprocess([decoded[i] for i in ok], self.spec, self.dtype)
            embeds = self._embed(pixels)
            result: NDArray[np.float32] = embeds.float().cpu().numpy()
        return result, ok

    async def run(self) -> int:
        """The naive peer's loop (`getmany` of up to `batch` records, then `_handle`)."""
        try:
            return await super().run()
        finally:
            self._worker.shutdown()

    async def _handle(
        self,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        http: httpx.AsyncClient,
    ) -> None:
        events = await fetch_all([parse(r) for r in records], http)
        todo = [i for i, e in enumerate(events) if e.error is None]
        loop = asyncio.get_running_loop()
        blobs = [events[i].data or b"" for i in todo]
        embeddings, ok = await loop.run_in_executor(self._worker, self.embed_blobs, blobs)
        scored = [todo[j] for j in ok]
        outcomes = self.policy.score(embeddings, [events[i].surface for i in scored])
        answers: dict[int, dict[str, Any]] = {
            i: {"decision": o.decision.value, "matches": [m.wire() for m in o.matches]}
            for i, o in zip(scored, outcomes, strict=True)
        }
        sends = []
        for i, event in enumerate(events):
            answer = answers.get(i) or {"error": event.error or "image could not be decoded"}
            answer = {"id": event.id, **answer, "processed_at": datetime.now(UTC).isoformat()}
            sends.append(
                await producer.send(
                    self.config.verdict_topic,
                    json.dumps(answer).encode(),
                    key=event.id.encode("utf-8", "replace"),
                )
            )
        await asyncio.gather(*sends)
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        await consumer.commit(offsets)
        self.answered += len(records)


async def fetch_all(events: list[Event], http: httpx.AsyncClient) -> list[Event]:
    """The events with their URLs fetched, all at once; a failed fetch becomes the error."""

    async def one(event: Event) -> Event:
        if event.url is None or event.error is not None:
            return event
        try:
            response = await http.get(event.url)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            return Event(event.id, event.surface, error=f"fetch failed: {str(exc)[:200]}")
        return Event(event.id, event.surface, response.content)

    return list(await asyncio.gather(*(one(e) for e in events)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = peer_arguments("The strong CLIP moderation consumer.", batch=STRONG_BATCH)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    return run_peer(StrongPeer(StrongConfig(**config_fields(args), compile=args.compile)))


if __name__ == "__main__":
    raise SystemExit(main())
