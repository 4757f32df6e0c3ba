"""`VisionGraphs` without a GPU: its buckets, copies, graph ids and thread, on the CPU provider.

ONNX Runtime's CPU provider ignores `gpu_graph_id`, and the CUDA copies are stood in for by
host `memmove`s, so this checks everything but the capture itself (tests/gpu does that).
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from moderator.embed import load_model
from moderator.embed import runtime as runtime_module
from moderator.embed.graphs import VisionGraphs

SIZE, DIM = 32, 32  # the tiny export's geometry


class _HostCopies:
    """`CudaRuntime`'s calls on host memory."""

    def set_device(self, device_id: int) -> None:
        pass

    def create_stream(self) -> int:
        return 7

    def destroy_stream(self, stream: int) -> None:
        pass

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        ctypes.memmove(pointer, array.ctypes.data, array.nbytes)

    def copy_on_device(self, target: int, source: int, nbytes: int, stream: int) -> None:
        ctypes.memmove(target, source, nbytes)

    def synchronize(self, stream: int) -> None:
        pass


class _Recording:
    """The session, noting each run's graph id and thread."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.runs: list[tuple[str, str]] = []

    def io_binding(self) -> Any:
        return self.session.io_binding()

    def run_with_iobinding(self, binding: Any, options: ort.RunOptions) -> None:
        graph_id = options.get_run_config_entry("gpu_graph_id")
        self.runs.append((graph_id, threading.current_thread().name))
        self.session.run_with_iobinding(binding, options)


@pytest.fixture(scope="module")
def session(tiny_model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(tiny_model / "vision.onnx"), providers=["CPUExecutionProvider"])


def _graphs(session: Any, max_batch: int = 4) -> VisionGraphs:
    return VisionGraphs(
        session,
        device_id=0,
        image_size=SIZE,
        embed_dim=DIM,
        max_batch=max_batch,
        pixels_name="pixels",
        output_name="embeddings",
        device="cpu",
        cuda=_HostCopies(),
    )


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_each_batch_runs_in_its_bucket_and_gives_the_plain_rows(
    session: ort.InferenceSession,
) -> None:
    recording = _Recording(session)
    graphs = _graphs(recording)
    try:
        assert graphs.buckets == [1, 2, 4]
        assert [graphs.bucket(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, None]
        # A full bucket, then fewer rows in it: the rows left over from before are ignored.
        for n, seed in ((4, 0), (3, 1), (1, 2), (5, 3), (2, 4)):
            pixels = _pixels(n, seed)
            (want,) = session.run(None, {"pixels": pixels})
            got = graphs.encode_host(pixels)
            assert got.shape == (n, DIM)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"batch of {n}")
        # Bucket i runs as graph i + 1 (0 is ORT's default id); past the largest, id -1.
        assert [graph_id for graph_id, _ in recording.runs] == ["3", "3", "1", "-1", "2"]
    finally:
        graphs.close()


def test_device_pixels_are_copied_into_the_bucket(session: ort.InferenceSession) -> None:
    graphs = _graphs(session)
    try:
        for n, seed in ((3, 5), (6, 6)):  # 6: past the largest bucket, read in place
            pixels = _pixels(n, seed)
            (want,) = session.run(None, {"pixels": pixels})
            got = graphs.encode_device(pixels.ctypes.data, n)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"batch of {n}")
    finally:
        graphs.close()


def test_every_run_happens_in_the_graphs_own_thread(session: ort.InferenceSession) -> None:
    """ORT keeps CUDA graphs per thread: capture and replays must share one."""
    recording = _Recording(session)
    graphs = _graphs(recording)
    try:
        graphs.warm_up()
        with ThreadPoolExecutor(max_workers=3) as callers:
            list(callers.map(lambda seed: graphs.encode_host(_pixels(2, seed)), range(6)))
        threads = {thread for _, thread in recording.runs}
        assert len(recording.runs) == 3 + 6
        assert len(threads) == 1
        assert threads.pop().startswith("cuda-graphs")
    finally:
        graphs.close()


def test_a_failed_capture_leaves_a_runtime_without_graphs(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, cuda_chosen: None
) -> None:
    """The CUDA provider is stood in for by the CPU one; the graphs' warm-up fails as a
    capture would, and `load_model` reopens the image tower without them."""
    opened: list[dict[str, str]] = []
    closed: list[bool] = []
    real_session = ort.InferenceSession

    def session(path: str, **kwargs: Any) -> Any:
        if Path(path).name == "vision.onnx":
            opened.append(kwargs["providers"][0][1])
        return real_session(path, providers=["CPUExecutionProvider"])

    class Failing:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def warm_up(self) -> None:
            raise RuntimeError("capture failed")

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(runtime_module.ort, "InferenceSession", session)
    monkeypatch.setattr(runtime_module, "VisionGraphs", Failing)
    runtime = load_model(tiny_model, providers=("cuda",), cuda_graphs=True, attention="auto")
    assert runtime.info()["cuda_graphs"] is False
    assert opened == [{"device_id": "0", "enable_cuda_graph": "1"}, {"device_id": "0"}]
    assert closed == [True]
    assert runtime.encode_pixels(_pixels(2, 9)).shape == (2, DIM)
