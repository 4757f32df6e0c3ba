"""The image tower as CUDA graphs (`model.cuda_graphs`) on a real GPU: same embeddings as
without graphs, for host and device pixels, across buckets and past the largest.

Skipped without a CUDA GPU, as in CI; run on the GPU machine with `python -m pytest -q
tests/gpu`.
"""

from __future__ import annotations

import numpy as np
import pytest

from moderator.embed import load_model
from moderator.embed.providers import cuda_device_count
from moderator.embed.runtime import ClipRuntime

pytestmark = pytest.mark.skipif(cuda_device_count() == 0, reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def pair() -> tuple[ClipRuntime, ClipRuntime]:
    plain = load_model("demo", providers=["cuda"], max_batch=8)
    graphs = load_model("demo", providers=["cuda"], max_batch=8, cuda_graphs=True)
    return plain, graphs


# A graph runs its bucket's batch size, the plain run the batch's own, and CUDA picks GEMM
# kernels by size: the same rows differ by up to ~8e-5 (measured on an H100). A row from the
# wrong image, or a stale one, differs by ~1e-1.
ATOL = 3e-4


def _pixels(n: int, seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_host_pixels_give_the_plain_runs_embeddings(pair: tuple[ClipRuntime, ClipRuntime]) -> None:
    plain, graphs = pair
    assert graphs.info()["cuda_graphs"] is True
    assert plain.info()["cuda_graphs"] is False
    size = plain.image_size
    # Sizes on and between buckets, one past the largest (no graph), then a small batch after
    # a full one: the rows its bucket does not use still hold the full batch's pixels.
    for n, seed in ((1, 0), (3, 1), (8, 2), (9, 3), (8, 4), (2, 5)):
        pixels = _pixels(n, seed, size)
        want = plain.encode_pixels(pixels)
        got = graphs.encode_pixels(pixels)
        assert got.shape == want.shape == (n, plain.embed_dim)
        np.testing.assert_allclose(got, want, atol=ATOL, err_msg=f"batch of {n}")


def test_device_pixels_give_the_plain_runs_embeddings(
    pair: tuple[ClipRuntime, ClipRuntime],
) -> None:
    pytest.importorskip("nvidia.nvimgcodec")
    from moderator.bench.images import bench_images
    from moderator.pipeline.decode.gpu import GpuJpegDecoder

    plain, graphs = pair
    decoder = GpuJpegDecoder(plain.preprocess, device_id=0, max_batch=8)
    try:
        for n, seed in ((5, 11), (8, 12), (3, 13)):
            jpegs = [b.data for b in bench_images(n, png_fraction=0.0, seed=seed)]
            batch = decoder.fill(jpegs)
            assert batch.count == n
            want = plain.encode_device_pixels(batch)
            got = graphs.encode_device_pixels(batch)  # copied into its bucket's own buffer
            np.testing.assert_allclose(got, want, atol=ATOL, err_msg=f"batch of {n}")
    finally:
        decoder.close()


def test_callers_in_other_threads_replay_the_same_graphs(
    pair: tuple[ClipRuntime, ClipRuntime],
) -> None:
    """ORT keeps CUDA graphs per thread; the runtime runs them all in one thread of its own,
    so callers from the batcher's threads get the graphs captured at load."""
    from concurrent.futures import ThreadPoolExecutor

    plain, graphs = pair
    pixels = [_pixels(n, 20 + n, plain.image_size) for n in (1, 2, 3, 4, 5, 6)]
    with ThreadPoolExecutor(max_workers=3) as callers:
        got = list(callers.map(graphs.encode_pixels, pixels))
    for batch, rows in zip(pixels, got, strict=True):
        np.testing.assert_allclose(rows, plain.encode_pixels(batch), atol=ATOL)
