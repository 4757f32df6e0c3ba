"""The benchmark images: deterministic, photo-sized, and mostly JPEG."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from moderator.bench.images import JPEG_QUALITY, bench_images, encode, photo_like


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    first = bench_images(2, seed=7, width=160, height=120)
    assert first == bench_images(2, seed=7, width=160, height=120)
    assert [i.data for i in first] != [
        i.data for i in bench_images(2, seed=8, width=160, height=120)
    ]


def test_full_size_images_have_photo_like_sizes_and_the_png_share() -> None:
    images = bench_images(5, seed=1)
    assert [i.format for i in images].count("PNG") == 1  # round(5 × 0.2)
    for image in images:
        with Image.open(io.BytesIO(image.data)) as im:
            assert (im.format, im.size, im.mode) == (image.format, (1024, 768), "RGB")
        if image.format == "JPEG":
            # A photo at q90, not a flat synthetic picture of a few KB.
            assert 100_000 <= len(image.data) <= 300_000, len(image.data)
        else:
            assert len(image.data) > 500_000  # lossless keeps the grain


def test_png_fraction_bounds_and_all_jpeg() -> None:
    assert {i.format for i in bench_images(3, seed=0, width=64, height=48, png_fraction=0)} == {
        "JPEG"
    }
    assert {i.format for i in bench_images(2, seed=0, width=64, height=48, png_fraction=1)} == {
        "PNG"
    }
    with pytest.raises(ValueError, match="png_fraction"):
        bench_images(1, png_fraction=1.5)
    with pytest.raises(ValueError, match="n must be"):
        bench_images(-1)


def test_encode_refuses_other_formats() -> None:
    import numpy as np

    image = photo_like(np.random.default_rng(0), 64, 48)
    assert encode(image, "JPEG", JPEG_QUALITY)[:3] == b"\xff\xd8\xff"
    with pytest.raises(ValueError, match="JPEG or PNG"):
        encode(image, "WEBP")
