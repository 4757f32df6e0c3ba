"""The GPU path's host side: which images may go to the GPU, and the resize graphs.

The graph is plain ONNX, so ONNX Runtime's CPU provider runs the same graph the CUDA provider
runs in `serve`; the GPU itself is exercised by tests/gpu (run on the GPU machine).
"""

from __future__ import annotations

import io
import time

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image
from moderator.pipeline.decode.resize import (
    geometry,
    gpu_eligible,
    header_is_short,
    reduction,
    resize_crop_model,
    resize_crop_same_size_model,
    takes_same_size_graph,
)

SPEC = PreprocessSpec.for_model(224, 224)


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: resampling differences show, JPEG artefacts do not matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = base + rng.normal(0, 12, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> bytes:
    im = Image.fromarray(array)
    if mode is not None:
        im = im.convert(mode)
    buffer = io.BytesIO()
    im.save(buffer, format=fmt)
    return buffer.getvalue()


def _pillow_reference(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The graph's steps in Pillow: `reduce(2)` and BILINEAR down to the draft size, then
    BICUBIC to the resize target, then the centre crop."""
    height, width = rgb.shape[:2]
    half, draft = reduction(height, width, spec)
    im = Image.fromarray(rgb)
    if half[2] == 0.5:  # a box average of the even rows and columns
        im = im.crop((0, 0, width // 2 * 2, height // 2 * 2)).reduce(2)
    if tuple(draft[2:]) != (im.height, im.width):
        im = im.resize((int(draft[3]), int(draft[2])), Image.Resampling.BILINEAR)
    sizes, starts, _ = geometry(height, width, spec)
    resized = np.asarray(im.resize((int(sizes[3]), int(sizes[2])), Image.Resampling.BICUBIC))
    top, left = int(starts[0]), int(starts[1])
    s = spec.image_size
    return resized[top : top + s, left : left + s]


def _planes(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) → (3, h, w): how nvImageCodec hands the decoder its images."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _feeds(i: int, rgb: np.ndarray) -> dict[str, np.ndarray]:
    height, width = rgb.shape[:2]
    half, draft = reduction(height, width, SPEC)
    sizes, starts, ends = geometry(height, width, SPEC)
    values = {"image": _planes(rgb), "half": half, "draft": draft}
    values |= {"sizes": sizes, "starts": starts, "ends": ends}
    return {f"{name}_{i}": value for name, value in values.items()}


def test_reduction_is_about_the_cpu_paths_jpeg_draft_size() -> None:
    # 1024×768 resizes to 298×224: Pillow's draft decodes it at 1/2, 512×384.
    half, draft = reduction(768, 1024, SPEC)
    assert half.tolist() == [1, 1, 0.5, 0.5]
    assert draft.tolist() == [1, 3, 384, 512]  # what halving gives: the second step is idle
    half, draft = reduction(3000, 4000, SPEC)  # 1/8: halving once, then a quarter
    assert half.tolist() == [1, 1, 0.5, 0.5]
    assert draft.tolist() == [1, 3, 375, 500]
    _, draft = reduction(1001, 1501, SPEC)  # 1/4: Pillow's draft size, rounded up
    assert draft.tolist() == [1, 3, 251, 376]
    _, draft = reduction(769, 1025, SPEC)  # 1/2: halving drops the odd row and column
    assert draft.tolist() == [1, 3, 384, 512]
    half, draft = reduction(400, 500, SPEC)  # under twice the target: no draft
    assert half.tolist() == [1, 1, 1, 1]
    assert draft.tolist() == [1, 3, 400, 500]


def test_resize_graph_matches_pillow_for_images_of_different_sizes_and_drafts() -> None:
    images = [
        _photo(640, 480, 0),  # draft 1/2
        _photo(300, 500, 1),  # none
        _photo(224, 224, 2),  # none, nothing to resample
        _photo(1000, 230, 3),  # none: the short side is already near the target
        _photo(1501, 1001, 4),  # 1/4, odd sizes
        _photo(2000, 1900, 5),  # 1/8
    ]
    session = ort.InferenceSession(
        resize_crop_model(len(images), SPEC.image_size), providers=["CPUExecutionProvider"]
    )
    feeds: dict[str, np.ndarray] = {}
    for i, rgb in enumerate(images):
        feeds |= _feeds(i, rgb)
    (out,) = session.run(None, feeds)
    assert out.shape == (len(images), 224, 224, 3)
    assert out.dtype == np.uint8
    for got, rgb in zip(out, images, strict=True):
        diff = np.abs(got.astype(np.int16) - _pillow_reference(rgb, SPEC))
        assert diff.mean() < 0.5, rgb.shape  # measured 0.0-0.3: Pillow rounds between passes
        assert diff.max() <= 6, rgb.shape


def test_resize_graph_stays_near_the_cpu_paths_pixels_for_a_jpeg() -> None:
    """The reason for the reduction: the CPU path decodes a DCT draft; the GPU path decodes at
    full size, and without the reduction would blur differently."""
    for width, height in ((1024, 768), (1600, 1200), (3200, 2400)):
        data = _encode(_photo(width, height, width))
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
        session = ort.InferenceSession(
            resize_crop_model(1, SPEC.image_size), providers=["CPUExecutionProvider"]
        )
        (out,) = session.run(None, _feeds(0, rgb))
        diff = np.abs(out[0].astype(np.int16) - decode_image(data, SPEC))
        assert diff.mean() < 1.0, (width, height)  # measured 0.27, 0.62, 0.47


def test_same_size_graph_gives_the_mixed_graphs_pixels() -> None:
    images = [_photo(640, 480, seed) for seed in range(3)]  # a 1/2 draft
    mixed = ort.InferenceSession(
        resize_crop_model(3, SPEC.image_size), providers=["CPUExecutionProvider"]
    )
    feeds: dict[str, np.ndarray] = {}
    for i, rgb in enumerate(images):
        feeds |= _feeds(i, rgb)
    (want,) = mixed.run(None, feeds)
    same = ort.InferenceSession(
        resize_crop_same_size_model(3, SPEC.image_size), providers=["CPUExecutionProvider"]
    )
    shared = {k[: -len("_0")]: v.copy() for k, v in _feeds(0, images[0]).items() if k != "image_0"}
    for name in ("draft", "sizes"):
        shared[name][0] = 3
    stacked = {f"image_{i}": _planes(rgb) for i, rgb in enumerate(images)}
    (got,) = same.run(None, stacked | shared)
    assert got.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(got, want)
    assert len({got[i].tobytes() for i in range(3)}) == 3  # each row is its own image


def test_only_full_buckets_of_one_modest_shape_take_the_same_size_graph() -> None:
    photo = (768, 1024, 3)
    assert takes_same_size_graph(8, 8, [photo] * 8, SPEC)
    assert not takes_same_size_graph(5, 8, [photo] * 5, SPEC)  # 3 spare full-size resizes
    assert not takes_same_size_graph(1, 1, [photo], SPEC)
    assert not takes_same_size_graph(2, 2, [photo, (480, 640, 3)], SPEC)
    assert takes_same_size_graph(128, 128, [photo] * 128, SPEC)  # 1.8 GB in all
    assert not takes_same_size_graph(128, 128, [(3000, 4000, 3)] * 128, SPEC)  # 28 GB
    # Without a reduction the float copies stay full size: 10 bytes a value, not 6.
    wide = (300, 2000, 3)  # under twice the target on the short side: no draft
    assert takes_same_size_graph(64, 64, [wide] * 64, SPEC)  # 1.1 GB
    assert not takes_same_size_graph(128, 128, [wide] * 128, SPEC)  # 2.3 GB (1.4 at 6 bytes)


def test_geometry_is_the_cpu_paths_resize_and_centre_crop() -> None:
    sizes, starts, ends = geometry(768, 1024, SPEC)  # landscape: height is the short side
    assert sizes.tolist() == [1, 3, 224, 298]  # 224 * 1024 / 768 = 298.67, truncated
    assert starts.tolist() == [0, 37]  # floor((298 - 224) / 2)
    assert ends.tolist() == [224, 261]
    sizes, starts, _ = geometry(1000, 500, SPEC)
    assert sizes.tolist() == [1, 3, 448, 224]
    assert starts.tolist() == [112, 0]


@pytest.mark.parametrize(
    ("data", "eligible"),
    [
        pytest.param(_encode(_photo(320, 240, 0)), True, id="rgb-jpeg"),
        pytest.param(_encode(_photo(320, 240, 0), mode="L"), True, id="grey-jpeg"),
        pytest.param(_encode(_photo(320, 240, 0), mode="CMYK"), False, id="cmyk-jpeg"),
        pytest.param(_encode(_photo(320, 240, 0), fmt="PNG"), False, id="png"),
        pytest.param(_encode(_photo(320, 240, 0))[:20], False, id="truncated-header"),
        pytest.param(b"\xff\xd8\xff" + b"\x00" * 64, False, id="magic-only"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_only_jpegs_the_gpu_decodes_like_the_cpu_are_eligible(data: bytes, eligible: bool) -> None:
    assert gpu_eligible(data, SPEC) is eligible


def test_limits_and_settings_keep_a_jpeg_on_the_cpu() -> None:
    data = _encode(_photo(320, 240, 0))
    assert gpu_eligible(data, SPEC)
    # The pixel limit: the GPU would allocate the full image before anything could refuse it.
    assert not gpu_eligible(data, PreprocessSpec(224, 224, max_pixels=320 * 240 - 1))
    assert not gpu_eligible(data, PreprocessSpec(224, 224, max_bytes=len(data) - 1))
    assert not gpu_eligible(data, PreprocessSpec(224, 224, allowed_formats=frozenset({"PNG"})))
    # A resize edge below the crop needs padding, which only the CPU path does.
    assert not gpu_eligible(data, PreprocessSpec(224, 200))


def _photo_jpeg() -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "camera"  # an APP1 segment before the frame, as phones write
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "JPEG", exif=exif, quality=90)
    return buffer.getvalue()


def test_a_camera_jpeg_header_is_short() -> None:
    assert header_is_short(_photo_jpeg())


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8" + b"\xff" * 100_000,  # fill bytes: Pillow walks them one by one
        b"\xff\xd8" + b"\xff\xfe\x00\x02" * 50_000,  # empty comments
        b"\xff\xd8" + b"\xff\xe1\x00\x02" * 50_000,  # empty APP1 segments
        b"\xff\xd8\xff\xe0\x00",  # cut inside a length
        b"\xff\xd8\xff\xe0\x00\x01rest",  # a length under 2
        b"\xff\xd8\x00\x00",  # no marker where one must be
        b"\xff\xd8",
    ],
)
def test_headers_that_would_keep_the_loop_busy_are_not_short(data: bytes) -> None:
    started = time.perf_counter()
    assert not header_is_short(data)
    assert time.perf_counter() - started < 0.05  # bounded, whatever follows


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_header_check_never_raises(tail: bytes) -> None:
    header_is_short(b"\xff\xd8" + tail)
    header_is_short(_photo_jpeg()[:20] + tail)
