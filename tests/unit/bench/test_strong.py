"""The strong peer of `bench e2e`, without Kafka: parsing both wire forms (and junk), fetching
URLs, decoding a mixed batch, device preprocessing, and one batch handled end to end on the
demo checkpoint with fake Kafka clients (answers for every record, acks before the commit)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from moderator.bench.strong import Event, fetch_all, parse

_POLICY = Path(__file__).resolve().parents[3] / "policies" / "demo.yaml"


def _record(
    value: bytes | None, headers: list[tuple[str, bytes]] | None = None, offset: int = 0
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "in", offset % 2, offset, 0, 0, None, value, None, 0, len(value or b""), headers or []
    )


def _encode(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    return buffer.getvalue()


# --- parsing --------------------------------------------------------------------------------


def test_parse_reads_both_wire_forms() -> None:
    inline = json.dumps({"id": "a", "surface": "upload", "image_b64": "aGk="}).encode()
    assert parse(_record(inline)) == Event("a", "upload", b"hi")
    url = json.dumps({"id": "b", "image_url": "http://x/1.jpg"}).encode()
    assert parse(_record(url)) == Event("b", None, url="http://x/1.jpg")
    headers = [("ce_specversion", b"1.0"), ("CE_ID", b"c"), ("ce_surface", b"chat")]
    assert parse(_record(b"\xff\xd8\xff", headers)) == Event("c", "chat", b"\xff\xd8\xff")


@pytest.mark.parametrize(
    ("value", "headers", "error"),
    [
        (b"{not json", None, "not JSON"),
        (b"[1, 2]", None, "string id"),
        (b'{"image_b64": "aGk="}', None, "string id"),
        (b'{"id": "x", "image_b64": "%%%"}', None, "not base64"),
        (b'{"id": "x"}', None, "neither"),
        (None, None, "not JSON"),
        (None, [("ce_id", b"x")], "without image bytes"),
    ],
)
def test_parse_turns_bad_records_into_errors(
    value: bytes | None, headers: list[tuple[str, bytes]] | None, error: str
) -> None:
    event = parse(_record(value, headers, offset=7))
    assert event.error is not None
    assert error in event.error
    assert event.id in ("x", "in-1@7")  # its own id where it has one, else its position


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
    headers=st.lists(st.tuples(st.sampled_from(["ce_id", "ce_surface", "x"]), st.binary())),
)
def test_parse_never_raises_on_hostile_records(
    value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    event = parse(_record(value, headers))
    assert event.id
    assert (event.error is None) == (event.data is not None or event.url is not None)
    json.dumps({"id": event.id, "error": event.error})  # the answer can always be written


def test_fetch_all_fetches_urls_and_keeps_failures_as_errors() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ok.jpg":
            return httpx.Response(200, content=b"image")
        return httpx.Response(404)

    events = [
        Event("a", url="http://img/ok.jpg"),
        Event("b", "s", url="http://img/missing.jpg"),
        Event("c", data=b"inline"),
        Event("d", error="bad"),
    ]

    async def go() -> list[Event]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
            return await fetch_all(events, http)

    a, b, c, d = asyncio.run(go())
    assert a == Event("a", data=b"image")
    assert (b.id, b.surface) == ("b", "s")
    assert b.error is not None
    assert "404" in b.error
    assert (c, d) == (events[2], events[3])


# --- decoding and preprocessing -------------------------------------------------------------


def _mixed_batch() -> list[bytes]:
    photo = Image.new("RGB", (96, 64), (200, 30, 30))
    return [
        _encode(photo, "JPEG"),
        _encode(photo.convert("RGBA"), "PNG"),
        _encode(photo.convert("L"), "PNG"),
        _encode(photo.convert("P"), "PNG"),
        b"not an image",
        _encode(photo, "JPEG")[:40],  # truncated
    ]


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_decode_gives_rgb_uint8_per_image_and_none_for_junk(backend: str) -> None:
    torch = pytest.importorskip("torch")
    from moderator.bench.strong import decode

    out = decode(_mixed_batch(), "cpu", (None, None) if backend == "pil" else None)
    assert [o is None for o in out] == [False] * 4 + [True, True]
    for image in out[:4]:
        assert image.dtype == torch.uint8
        assert tuple(image.shape) == (3, 64, 96)
    red = out[0].float().mean(dim=(1, 2))
    assert red.tolist() == pytest.approx([200, 30, 30], abs=25)


def test_a_failed_device_batch_is_decoded_one_by_one() -> None:
    """One bad JPEG fails a batched device call; the rest are still decoded (on the CPU)."""
    torch = pytest.importorskip("torch")
    from moderator.bench.strong import decode

    calls: list[int] = []

    def batched(tensors: list[Any], device: str) -> list[Any]:
        calls.append(len(tensors))
        raise RuntimeError("nvjpeg: bad header")

    blobs = _mixed_batch()
    out = decode(blobs, "meta", (batched, None))
    assert calls == [2]  # the two JPEG-looking blobs, in one call
    assert [o is None for o in out] == [False] * 4 + [True, True]
    assert all(o.device == torch.device("meta") for o in out[:4])


def test_nvjpeg_decodes_a_batch_on_the_gpu_like_the_cpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from moderator.bench.strong import decode

    blobs = _mixed_batch()
    gpu, cpu = decode(blobs, "cuda"), decode(blobs, "cpu")
    assert [o is None for o in gpu] == [o is None for o in cpu]
    for on_gpu, on_cpu in zip(gpu[:4], cpu[:4], strict=True):
        assert on_gpu.device.type == "cuda"
        difference = (on_gpu.cpu().float() - on_cpu.float()).abs().mean()
        assert float(difference) < 3  # the IDCTs may differ by a level or so


def test_preprocess_resizes_crops_and_normalizes_in_order() -> None:
    torch = pytest.importorskip("torch")
    from moderator.bench.strong import Spec, preprocess

    spec = Spec(32, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    sizes = [(50, 100), (100, 50), (32, 32), (50, 100), (7, 300)]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (128, 128, 128)]
    images = [
        torch.tensor(c, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()
        for (h, w), c in zip(sizes, colours, strict=True)
    ]
    out = preprocess(images, spec, torch.float32)
    assert tuple(out.shape) == (5, 3, 32, 32)
    assert out.dtype == torch.float32
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    for row, colour in zip(out, colours, strict=True):
        expected = (torch.tensor(colour).float().view(3, 1, 1) / 255 - mean) / std
        assert torch.allclose(row, expected.expand(3, 32, 32), atol=1e-4)


def test_preprocess_keeps_the_centre() -> None:
    """A wide image whose middle third is white: after the centre crop, the middle is white
    and the cropped-away black edges are gone."""
    torch = pytest.importorskip("torch")
    from moderator.bench.strong import Spec, preprocess

    image = torch.zeros((3, 64, 192), dtype=torch.uint8)
    image[:, :, 64:128] = 255
    out = preprocess([image], Spec(64, 64, (0.0,) * 3, (1.0,) * 3), torch.float32)[0]
    assert float(out[:, :, 8:56].min()) > 0.99  # (the bicubic edge aside) all white


# --- one batch on the demo checkpoint --------------------------------------------------------


class _Producer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.sent: dict[str, dict[str, Any]] = {}

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        assert topic == "out"
        self.sent[key.decode()] = json.loads(value)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            self.log.append("ack")
            future.set_result(None)

        asyncio.get_running_loop().call_later(0.01, ack)
        return future


class _Consumer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.offsets: dict[TopicPartition, int] = {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.log.append("commit")
        self.offsets = offsets


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnx")
    from moderator.bench.naive import NaiveConfig, NaivePeer
    from moderator.bench.strong import StrongConfig, StrongPeer
    from moderator.export.demo_checkpoint import demo_checkpoint

    checkpoint = demo_checkpoint(cache=tmp_path_factory.mktemp("demo"), progress=lambda _: None)
    strong = StrongPeer(StrongConfig("x", "in", "out", "g", checkpoint, _POLICY, "cpu", batch=8))
    naive = NaivePeer(NaiveConfig("x", "in", "out", "g", checkpoint, _POLICY, "cpu"))
    return strong, naive


@pytest.mark.export
def test_the_strong_peer_embeds_as_the_naive_peer_does(peers: tuple[Any, Any]) -> None:
    from moderator.demo import shapes

    strong, naive = peers
    assert not strong.compiled  # compiling is for CUDA unless asked for
    images = [sample.image for sample in shapes.generate(6, seed=5)]
    blobs = [_encode(im, "PNG" if i % 2 else "JPEG") for i, im in enumerate(images)]
    ours, ok = strong.embed_blobs(blobs)
    theirs = naive.images([Image.open(io.BytesIO(b)).convert("RGB") for b in blobs])
    assert ok == list(range(6))
    assert float(np.sum(ours * theirs, axis=1).min()) >= 0.999


@pytest.mark.export
def test_a_batch_is_answered_in_full_then_committed(peers: tuple[Any, Any]) -> None:
    from moderator.demo import shapes

    strong, naive = peers
    image = next(iter(shapes.generate(1, seed=3))).image
    jpeg, png = _encode(image, "JPEG"), _encode(image, "PNG")
    records = [
        _record(json.dumps({"id": "b64", "image_b64": base64.b64encode(png).decode()}).encode()),
        _record(jpeg, [("ce_id", b"cloud"), ("ce_specversion", b"1.0")], offset=1),
        _record(json.dumps({"id": "url", "image_url": "http://img/a.jpg"}).encode(), offset=2),
        _record(b"junk", offset=3),
        _record(json.dumps({"id": "broken", "image_b64": "aGk="}).encode(), offset=4),
        _record(json.dumps({"id": "gone", "image_url": "http://img/no.jpg"}).encode(), offset=5),
    ]
    log: list[str] = []
    producer, consumer = _Producer(log), _Consumer(log)

    def respond(request: httpx.Request) -> httpx.Response:
        return (
            httpx.Response(200, content=jpeg)
            if "a.jpg" in str(request.url)
            else httpx.Response(500)
        )

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
            await strong._handle(records, producer, consumer, http)

    before = strong.answered
    asyncio.run(go())
    assert log == ["ack"] * 6 + ["commit"]
    assert consumer.offsets == {TopicPartition("in", 0): 5, TopicPartition("in", 1): 6}
    assert strong.answered - before == 6
    sent = producer.sent
    assert set(sent) == {"b64", "cloud", "url", "in-1@3", "broken", "gone"}
    expected = naive.policy.score(naive.images([image]), [None])[0].decision.value
    for key in ("b64", "cloud", "url"):
        assert (sent[key]["id"], sent[key]["decision"]) == (key, expected)
        assert "error" not in sent[key]
        assert isinstance(sent[key]["matches"], list)
    for key in ("in-1@3", "broken", "gone"):
        assert "decision" not in sent[key]
        assert sent[key]["error"]
