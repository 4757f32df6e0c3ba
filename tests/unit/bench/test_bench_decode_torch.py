"""The torch peer of `bench decode`: its geometry checked against ours on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from moderator.bench.images import bench_images
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image


def test_gpu_preprocess_matches_decode_image_geometry_on_cpu() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("torchcodec")
    from moderator.bench.decode_torch import gpu_preprocess

    spec = PreprocessSpec.for_model(32, 40)
    images = [i.data for i in bench_images(2, seed=4, width=160, height=120, png_fraction=0)]
    ours = np.stack([decode_image(b, spec) for b in images]).astype(np.float64)
    theirs = gpu_preprocess(images, spec, device="cpu").numpy()
    assert theirs.shape == (2, 32, 32, 3)
    assert theirs.dtype == np.uint8
    # Same crop window and resize: only resampling details differ (a level or two).
    assert np.abs(theirs - ours).mean() < 2.0
