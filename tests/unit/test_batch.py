import asyncio
import threading

import numpy as np

from moderator.batch import Batcher


def _infer_recording(sizes: list[int]):  # type: ignore[no-untyped-def]
    def infer(pixels: np.ndarray) -> np.ndarray:
        sizes.append(len(pixels))
        assert threading.current_thread() is not threading.main_thread()
        # embedding = mean pixel value, so each result can be matched to its input
        return pixels.reshape(len(pixels), -1).mean(axis=1, keepdims=True).astype(np.float32)

    return infer


async def test_full_batches_leave_without_waiting_and_results_match_inputs() -> None:
    sizes: list[int] = []
    batcher = Batcher([_infer_recording(sizes)], max_batch=4, max_wait_s=5.0)
    batcher.start()
    try:
        images = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(8)]
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.embed(im) for im in images)), timeout=3.0
        )
    finally:
        await batcher.stop()
    assert [float(r.embedding[0]) for r in results] == [float(i) for i in range(8)]
    assert sizes == [4, 4]
    assert all(r.batch_size == 4 for r in results)


async def test_partial_batch_leaves_after_max_wait() -> None:
    sizes: list[int] = []
    batcher = Batcher([_infer_recording(sizes)], max_batch=64, max_wait_s=0.02)
    batcher.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.embed(np.zeros((2, 2, 3), np.uint8)) for _ in range(3))),
            timeout=3.0,
        )
    finally:
        await batcher.stop()
    assert sizes == [3]
    assert len(results) == 3


async def test_inference_failure_reaches_every_waiter() -> None:
    def broken(pixels: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    batcher = Batcher([broken], max_batch=2, max_wait_s=0.01)
    batcher.start()
    try:
        outcomes = await asyncio.gather(
            batcher.embed(np.zeros((1, 1, 3), np.uint8)),
            batcher.embed(np.zeros((1, 1, 3), np.uint8)),
            return_exceptions=True,
        )
    finally:
        await batcher.stop()
    assert all(isinstance(o, RuntimeError) for o in outcomes)
