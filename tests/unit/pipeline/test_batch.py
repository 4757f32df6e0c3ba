import asyncio
import threading
import time
from typing import Any

import numpy as np

from moderator.errors import InferenceFailed
from moderator.pipeline.batch import Batcher, DeviceInfer, NotDecoded


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
    assert all(isinstance(o, InferenceFailed) for o in outcomes)
    assert all(isinstance(o.__cause__, RuntimeError) for o in outcomes)  # type: ignore[union-attr]


def _device_infer_recording(calls: list[list[str]]) -> DeviceInfer:
    """Stands in for a GPU decoder + model: bytes b"<n>" embed as n, b"bad" is refused."""

    def finish(items: list[np.ndarray | bytes]) -> tuple[np.ndarray, dict[int, str]]:
        calls.append(["bytes" if isinstance(i, bytes) else "pixels" for i in items])
        rows = np.zeros((len(items), 1), np.float32)
        failed: dict[int, str] = {}
        for index, item in enumerate(items):
            if isinstance(item, bytes) and item == b"bad":
                failed[index] = "corrupt scan"
            elif isinstance(item, bytes):
                rows[index] = float(item.decode())
            else:
                rows[index] = float(item.mean())
        return rows, failed

    return DeviceInfer(decode=list, finish=finish)


async def test_jpeg_bytes_and_pixels_share_a_batch_on_a_worker_that_decodes() -> None:
    calls: list[list[str]] = []
    sizes: list[int] = []
    batcher = Batcher(
        [_infer_recording(sizes)],
        device_infers=[_device_infer_recording(calls)],
        max_batch=4,
        max_wait_s=5.0,
    )
    batcher.start()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                batcher.embed_encoded(b"7"),
                batcher.embed(np.full((2, 2, 3), 3, np.uint8)),
                batcher.embed_encoded(b"bad"),
                batcher.embed_encoded(b"9"),
                return_exceptions=True,
            ),
            timeout=3.0,
        )
    finally:
        await batcher.stop()
    assert calls == [["bytes", "pixels", "bytes", "bytes"]]  # one batch, in arrival order
    assert sizes == []  # the pixels-only path was not used
    assert float(outcomes[0].embedding[0]) == 7.0  # type: ignore[union-attr]
    assert float(outcomes[1].embedding[0]) == 3.0  # type: ignore[union-attr]
    assert isinstance(outcomes[2], NotDecoded)
    assert "corrupt scan" in str(outcomes[2])
    assert float(outcomes[3].embedding[0]) == 9.0  # type: ignore[union-attr]


async def test_a_worker_without_a_gpu_decoder_hands_bytes_back_and_embeds_the_rest() -> None:
    sizes: list[int] = []
    batcher = Batcher([_infer_recording(sizes)], max_batch=3, max_wait_s=5.0)
    batcher.start()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                batcher.embed(np.full((2, 2, 3), 5, np.uint8)),
                batcher.embed_encoded(b"7"),
                batcher.embed(np.full((2, 2, 3), 6, np.uint8)),
                return_exceptions=True,
            ),
            timeout=3.0,
        )
    finally:
        await batcher.stop()
    assert sizes == [2]
    assert float(outcomes[0].embedding[0]) == 5.0  # type: ignore[union-attr]
    assert isinstance(outcomes[1], NotDecoded)
    assert float(outcomes[2].embedding[0]) == 6.0  # type: ignore[union-attr]


def _one_item_batches(decode: Any, finish: Any, **options: Any) -> Batcher:
    """A started worker with these GPU stages, one item per batch, no waiting for more."""
    batcher = Batcher(
        [_infer_recording([])],
        device_infers=[DeviceInfer(decode=decode, finish=finish)],
        max_batch=1,
        max_wait_s=0.0,
        **options,
    )
    batcher.start()
    return batcher


async def test_the_next_batch_decodes_while_the_previous_one_finishes() -> None:
    second_decoding = threading.Event()
    order: list[str] = []

    def decode(items: list[np.ndarray | bytes]) -> list[np.ndarray | bytes]:
        order.append(f"decode {items[0]!r}")
        if items[0] == b"2":
            second_decoding.set()
        return items

    def finish(items: list[np.ndarray | bytes]) -> tuple[np.ndarray, dict[int, str]]:
        if items[0] == b"1":  # holds batch 1 until batch 2 is being decoded beside it
            assert second_decoding.wait(3.0), "batch 2 was not decoded during batch 1"
        order.append(f"finish {items[0]!r}")
        return np.array([[float(i.decode())] for i in items], np.float32), {}  # type: ignore[union-attr]

    batcher = _one_item_batches(decode, finish)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.embed_encoded(str(i).encode()) for i in (1, 2, 3))),
            timeout=5.0,
        )
    finally:
        await batcher.stop()
    assert [float(r.embedding[0]) for r in results] == [1.0, 2.0, 3.0]
    # Batch 3 is decoded only after batch 1 finished: two batches in hand at most.
    assert order.index("finish b'1'") < order.index("decode b'3'")
    assert order.index("decode b'2'") < order.index("finish b'1'")


async def test_a_gpu_workers_stages_are_timed_batch_by_batch() -> None:
    stages: list[tuple[str, float]] = []
    lock = threading.Lock()

    def on_stage(stage: str, seconds: float) -> None:
        with lock:  # called from the stage threads as well as the loop
            stages.append((stage, seconds))

    def decode(items: list[np.ndarray | bytes]) -> list[np.ndarray | bytes]:
        time.sleep(0.02)
        return items

    def finish(items: list[np.ndarray | bytes]) -> tuple[np.ndarray, dict[int, str]]:
        time.sleep(0.08)
        return np.array([[float(i.decode())] for i in items], np.float32), {}  # type: ignore[union-attr]

    batcher = _one_item_batches(decode, finish, on_stage=on_stage)
    try:
        await asyncio.wait_for(
            asyncio.gather(batcher.embed_encoded(b"1"), batcher.embed_encoded(b"2")), timeout=5.0
        )
    finally:
        await batcher.stop()
    by_stage: dict[str, list[float]] = {}
    for stage, seconds in stages:
        by_stage.setdefault(stage, []).append(seconds)
    assert {stage: len(times) for stage, times in by_stage.items()} == {
        "gpu_decode": 2,
        "gpu_finish": 2,
        "gpu_wait": 1,  # only batch 2 had a batch before it
    }
    assert min(by_stage["gpu_decode"]) >= 0.02
    assert min(by_stage["gpu_finish"]) >= 0.08
    # Batch 2 decoded in 0.02 s while batch 1 finished in 0.08: it waited for the rest.
    assert 0 < by_stage["gpu_wait"][0] <= max(by_stage["gpu_finish"])


def test_buckets_are_powers_of_two_up_to_the_first_holding_max_batch() -> None:
    from moderator.types import buckets

    assert buckets(1) == [1]
    assert buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert buckets(65) == [1, 2, 4, 8, 16, 32, 64, 128]
