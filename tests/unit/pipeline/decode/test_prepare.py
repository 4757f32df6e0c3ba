"""What a decode process returns for a record: parsed event, digest, pixels, or the error."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from multiprocessing import get_context
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from moderator.errors import DecodeError, EventError, ModeratorError, TooLarge, UnsupportedFormat
from moderator.pipeline.decode import prepare as prepare_module
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image, image_format
from moderator.pipeline.decode.prepare import prepare_record, start_pool, warm_up_worker

SPEC = PreprocessSpec.for_model(32, 32)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _inline(data: bytes, **extra: object) -> bytes:
    return json.dumps({"id": "e1", "image_b64": base64.b64encode(data).decode(), **extra}).encode()


def test_inline_image_comes_back_as_digest_and_pixels_not_bytes() -> None:
    data = _jpeg()
    prepared = prepare_record(_inline(data, surface="chat"), [], max_bytes=1 << 20, spec=SPEC)
    assert prepared.event.id == "e1"
    assert prepared.event.surface == "chat"
    assert prepared.event.image_bytes is None  # never shipped back to the loop
    assert prepared.image_sha256 == hashlib.sha256(data).hexdigest()
    assert prepared.pixels is not None
    np.testing.assert_array_equal(prepared.pixels, decode_image(data, SPEC))


def test_url_event_is_left_for_the_loop_to_fetch() -> None:
    value = json.dumps({"id": "u1", "image_url": "https://example.com/a.jpg"}).encode()
    prepared = prepare_record(value, [], max_bytes=1 << 20, spec=SPEC)
    assert prepared.event.image_url == "https://example.com/a.jpg"
    assert prepared.image_sha256 is None
    assert prepared.pixels is None


def test_cloudevent_body_is_the_image() -> None:
    data = _jpeg()
    headers = [
        ("ce_id", b"c1"),
        ("ce_type", b"image.submitted"),
        ("ce_source", b"/uploads"),
        ("ce_specversion", b"1.0"),
        ("content-type", b"image/jpeg"),
    ]
    prepared = prepare_record(data, headers, max_bytes=1 << 20, spec=SPEC)
    assert prepared.event.form == "cloudevent"
    assert prepared.image_sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"{not json", EventError),
        (_inline(b"\x00" * 100), UnsupportedFormat),
        (_inline(_jpeg()[:300]), DecodeError),
        (_inline(b"x" * 2048), TooLarge),
    ],
)
def test_errors_cross_the_process_boundary_with_their_reason(
    value: bytes, error: type[Exception]
) -> None:
    """The loop dead-letters by `reason`: the worker's exception must arrive as itself."""
    call = partial(prepare_record, value, [], max_bytes=1024, spec=SPEC)
    with (
        ProcessPoolExecutor(1, mp_context=get_context("forkserver")) as pool,
        pytest.raises(error) as caught,
    ):
        pool.submit(call).result()
    assert type(caught.value) is error
    assert caught.value.reason == error.reason  # type: ignore[attr-defined]


def test_prepared_records_pickle() -> None:
    prepared = prepare_record(_inline(_jpeg()), [], max_bytes=1 << 20, spec=SPEC)
    again = pickle.loads(pickle.dumps(prepared))
    assert again.event == prepared.event
    assert again.image_sha256 == prepared.image_sha256


def test_keep_jpeg_leaves_a_gpu_fit_jpeg_undecoded_and_decodes_the_rest() -> None:
    spec = PreprocessSpec.for_model(32, 32)
    data = _jpeg()
    kept = prepare_record(_inline(data), [], max_bytes=1 << 20, spec=spec, keep_jpeg=True)
    assert kept.jpeg == data
    assert kept.pixels is None
    assert kept.image_sha256 == hashlib.sha256(data).hexdigest()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 90, 200)).save(buffer, format="PNG")
    png = buffer.getvalue()
    decoded = prepare_record(_inline(png), [], max_bytes=1 << 20, spec=spec, keep_jpeg=True)
    assert decoded.jpeg is None
    assert decoded.pixels is not None
    np.testing.assert_array_equal(decoded.pixels, decode_image(png, spec))


def test_worker_warm_up_decodes_a_jpeg_and_a_png_whatever_the_operator_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both decoders' first runs happen at start, through the real `decode_image`, even where
    the operator's formats or pixel limit would refuse the warm-up images."""
    seen: list[str | None] = []

    def decode(data: bytes, spec: PreprocessSpec) -> np.ndarray:
        seen.append(image_format(data))
        return decode_image(data, spec)

    monkeypatch.setattr(prepare_module, "decode_image", decode)
    strict = replace(SPEC, allowed_formats=frozenset({"WEBP"}), max_pixels=100, max_bytes=100)
    assert warm_up_worker(strict) == os.getpid()
    assert seen == ["JPEG", "PNG"]


def test_start_pool_starts_every_process_before_it_returns() -> None:
    """On demand, a pool starts a process only when work finds none idle, and a quick warm-up
    frees one before the next is started; the barrier makes each process take one."""
    pool = start_pool(6, SPEC)
    try:
        assert len(pool._processes) == 6  # CPython's record of the processes it started
        pids = {pool.submit(os.getpid).result() for _ in range(12)}
        assert pids <= set(pool._processes)
    finally:
        pool.shutdown()


def test_a_pool_whose_warm_up_fails_is_shut_down_with_the_reason() -> None:
    # No image_size: every process fails its warm-up, before the barrier.
    broken = SimpleNamespace(image_size=0, resize_shortest_edge=0)
    failed = r"decode processes failed to start: ConfigError\('image_size must be at least 1"
    with pytest.raises(ModeratorError, match=failed):
        start_pool(2, broken)  # type: ignore[arg-type]


def test_a_decode_process_loads_neither_the_gpu_decoder_nor_cuda() -> None:
    """The workers ask `gpu_eligible` of every inline JPEG; importing it must not pull in the
    GPU decoder, its CUDA bindings or ONNX Runtime."""
    heavy = ["moderator.pipeline.decode.gpu", "moderator.cudart", "onnxruntime"]
    script = (
        f"import sys, {prepare_module.__name__}; print([m for m in {heavy} if m in sys.modules])"
    )
    assert subprocess.check_output([sys.executable, "-c", script], text=True).strip() == "[]"


def test_the_worker_reports_its_cpu_by_stage() -> None:
    """The service's CPU budget per stage counts what a decode process spends, stage by stage."""
    big = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big, format="JPEG", quality=95)
    prepared = prepare_record(_inline(big.getvalue()), [], max_bytes=1 << 22, spec=SPEC)
    assert set(prepared.cpu) == {"parse", "base64", "hash", "decode", "resize"}
    assert all(seconds >= 0 for seconds in prepared.cpu.values())
    assert prepared.cpu["decode"] > 0  # a 640×480 noise JPEG takes a measurable decode
    url = json.dumps({"id": "u1", "image_url": "https://example.com/a.jpg"}).encode()
    assert set(prepare_record(url, [], max_bytes=1 << 20, spec=SPEC).cpu) == {"parse"}


def test_decode_counted_gives_the_same_pixels_and_its_cpu() -> None:
    data = _jpeg()
    decoded = prepare_module.decode_counted(data, SPEC)
    np.testing.assert_array_equal(decoded.pixels, decode_image(data, SPEC))
    assert set(decoded.cpu) == {"decode", "resize"}
