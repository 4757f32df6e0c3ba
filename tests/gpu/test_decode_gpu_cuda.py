"""`GpuJpegDecoder` on a real GPU (nvImageCodec + ONNX Runtime's CUDA provider).

Skipped where either is missing, as in CI; run on the GPU machine with
`python -m pytest -q tests/gpu`. Reference: Pillow's full decode, the graph's reduction to
the CPU path's draft size (`reduce(2)`, then BILINEAR), then BICUBIC resize and centre crop.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from moderator.bench.images import bench_images
from moderator.embed.providers import cuda_device_count
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image
from moderator.pipeline.decode.gpu import DeviceBatch, GpuJpegDecoder
from moderator.pipeline.decode.resize import geometry, reduction


def _gpu_ready() -> bool:
    try:
        import nvidia.nvimgcodec  # noqa: F401
    except ImportError:
        return False
    return cuda_device_count() > 0


pytestmark = pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and nvImageCodec")

SPEC = PreprocessSpec.for_model(224, 224)


def _reference(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        full = ImageOps.exif_transpose(im).convert("RGB")
    width, height = full.size
    half, draft = reduction(height, width, SPEC)
    small = full
    if half[2] == 0.5:  # the graph's 2×2 box average, of the even rows and columns
        small = full.crop((0, 0, width // 2 * 2, height // 2 * 2)).reduce(2)
    if (small.height, small.width) != tuple(draft[2:]):
        small = small.resize((int(draft[3]), int(draft[2])), Image.Resampling.BILINEAR)
    sizes, starts, _ = geometry(height, width, SPEC)
    resized = np.asarray(small.resize((int(sizes[3]), int(sizes[2])), Image.Resampling.BICUBIC))
    top, left = int(starts[0]), int(starts[1])
    return resized[top : top + 224, left : left + 224]


@pytest.fixture(scope="module")
def decoder():  # type: ignore[no-untyped-def]
    dec = GpuJpegDecoder(SPEC, device_id=0, max_batch=16)
    yield dec
    dec.close()


def _jpeg(width: int, height: int, seed: int, **save: object) -> bytes:
    rng = np.random.default_rng(seed)
    from moderator.bench.images import photo_like

    buffer = io.BytesIO()
    photo_like(rng, width, height).save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def test_photos_match_pillows_resize_then_crop(decoder: GpuJpegDecoder) -> None:
    jpegs = [b.data for b in bench_images(6, png_fraction=0.0, seed=5)]
    batch = decoder.fill(jpegs)
    assert batch.failures == {}
    assert batch.rows == list(range(6))
    got = decoder.to_host(batch).astype(np.int16)
    for row, data in enumerate(jpegs):
        diff = np.abs(got[row] - _reference(data))
        assert diff.mean() < 1.5, row  # the GPU's IDCT and chroma upsampling differ slightly
        cpu = np.abs(got[row] - decode_image(data, SPEC).astype(np.int16))
        # The CPU path decodes a DCT-scaled draft; the reduction keeps the GPU near it
        # (0.29 levels on average in `bench decode`'s parity note on an H200).
        assert cpu.mean() < 1.5, row


def test_a_mixed_batch_keeps_each_item_in_its_row(decoder: GpuJpegDecoder) -> None:
    host = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    portrait = _jpeg(300, 500, 2)
    items: list[np.ndarray | bytes] = [
        _jpeg(640, 480, 1),
        host,
        b"\xff\xd8\xff\xe0" + b"\x00" * 200,  # a JPEG in name only
        portrait,
        _jpeg(320, 240, 3, progressive=True),
    ]
    batch = decoder.fill(items)
    assert set(batch.failures) == {2}
    assert batch.rows == [0, 3, None, 1, 2]  # decoded first, host pixels after
    got = decoder.to_host(batch)
    np.testing.assert_array_equal(got[3], host)
    assert np.abs(got[1].astype(np.int16) - _reference(portrait)).mean() < 1.5


def test_a_grey_jpeg_comes_out_as_three_equal_channels(decoder: GpuJpegDecoder) -> None:
    """The decoder asks nvImageCodec for planar RGB: a one-channel JPEG must still fill all
    three planes, as Pillow's convert("RGB") does on the CPU path."""
    grey = np.asarray(Image.open(io.BytesIO(_jpeg(640, 480, 4))).convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    got = decoder.to_host(decoder.fill([data]))[0].astype(np.int16)
    assert np.abs(got - _reference(data)).mean() < 1.5
    assert np.abs(got[..., 1] - got[..., 0]).max() <= 1
    assert np.abs(got[..., 2] - got[..., 0]).max() <= 1


def test_exif_orientation_is_applied(decoder: GpuJpegDecoder) -> None:
    image = Image.fromarray(
        np.concatenate(
            [np.full((240, 160, 3), (250, 10, 10), np.uint8), np.zeros((240, 160, 3), np.uint8)],
            axis=1,
        )
    )
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the red half ends up on top
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    data = buffer.getvalue()
    got = decoder.to_host(decoder.fill([data]))[0].astype(np.int16)
    assert np.abs(got - _reference(data)).mean() < 2.0
    assert got[:100, :, 0].mean() > 200 > got[124:, :, 0].mean() + 150


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_with_a_reduction(decoder: GpuJpegDecoder, orientation: int) -> None:
    """A rotated photo large enough for the 1/2 and 1/4 drafts: the reduction's sizes come
    from the decoded (rotated) shape."""
    for width, height in ((1280, 960), (1501, 1001)):
        data = _jpeg(width, height, seed=width, exif=_orientation_exif(orientation))
        got = decoder.to_host(decoder.fill([data]))[0].astype(np.int16)
        assert np.abs(got - _reference(data)).mean() < 1.5, (width, orientation)
        # The CPU path's draft of an odd side keeps a part pixel at its end, which rotation
        # moves to the start: Pillow's same steps differ from it by 1.2-3.5 levels here.
        cpu = np.abs(got - decode_image(data, SPEC).astype(np.int16))
        assert cpu.mean() < 4.5, (width, orientation)


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_embeddings_from_gpu_pixels_match_the_cpu_path() -> None:
    from moderator.embed import load_model

    runtime = load_model("demo", providers=["cuda"])
    spec = runtime.preprocess
    dec = GpuJpegDecoder(spec, device_id=0, max_batch=8)
    try:
        jpegs = [b.data for b in bench_images(5, png_fraction=0.0, seed=9)]
        rows, failures = dec.embed(jpegs, runtime.encode_device_pixels)
    finally:
        dec.close()
    assert failures == {}
    want = runtime.encode_pixels(np.stack([decode_image(b, spec) for b in jpegs]))
    cosine = (rows * want).sum(axis=1)
    assert cosine.min() > 0.99, cosine


def test_two_decoded_batches_in_hand_place_independently(decoder: GpuJpegDecoder) -> None:
    first = [_jpeg(640, 480, 11), _jpeg(500, 500, 12)]
    second = [_jpeg(400, 300, 13)]
    decoded_first = decoder.decode(first)
    decoded_second = decoder.decode(second)  # as the batcher does while batch 1 is placed
    got_first = decoder.to_host(decoder.place(decoded_first)).astype(np.int16)
    got_second = decoder.to_host(decoder.place(decoded_second)).astype(np.int16)
    for got, data in zip(list(got_first) + list(got_second), first + second, strict=True):
        assert np.abs(got - _reference(data)).mean() < 1.5


def test_same_size_batches_take_the_one_resize_and_match_the_mixed_graph(
    decoder: GpuJpegDecoder,
) -> None:
    jpegs = [_jpeg(640, 480, seed) for seed in range(20, 28)]  # a full bucket of 8
    decoder.same_size_resize = True
    got = decoder.to_host(decoder.fill(jpegs)).copy()
    decoder.same_size_resize = False
    try:
        want = decoder.to_host(decoder.fill(jpegs)).copy()
    finally:
        decoder.same_size_resize = True
    np.testing.assert_array_equal(got[:8], want[:8])
    for row, data in enumerate(jpegs):
        assert np.abs(got[row].astype(np.int16) - _reference(data)).mean() < 1.5


def test_warm_up_runs_every_graph_and_model_size_and_leaves_decoding_intact(
    decoder: GpuJpegDecoder,
) -> None:
    sizes: list[int] = []

    def encode(batch: DeviceBatch) -> np.ndarray:
        sizes.append(batch.count)
        return np.zeros((batch.count, 1), np.float32)

    decoder.warm_up(encode)
    assert sizes == list(range(1, 17))  # every batch size up to max_batch 16
    jpegs = [_jpeg(640, 480, 31), _jpeg(300, 500, 32)]
    got = decoder.to_host(decoder.fill(jpegs)).astype(np.int16)
    for row, data in enumerate(jpegs):
        assert np.abs(got[row] - _reference(data)).mean() < 1.5
