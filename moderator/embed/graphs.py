"""The vision graph's runs as CUDA graphs: one per batch bucket, replayed instead of launched.

Why: ONNX Runtime launches a few hundred kernels per ViT-B/32 call, and at the small batches
`serve` mostly sees the launches are most of the call. On an H200, one session with a graph
per batch size took a call from 1.17–1.28 ms to 0.61 ms at batch 4, 1.46–1.50 → 1.17 ms at 32
and 7.09 → 6.99 ms at 256 (+1.4 %), with the same embeddings; on an H100 `bench model` gives
1.9–2.6× the images/s at batch 1 and the same at 256 (docs/performance.md).

How, and the constraints that shape it:
- A graph replays the memory addresses it was captured with, so each bucket (1, 2, 4, …) has
  its own input and output buffers on the device and its own `gpu_graph_id`. A batch is
  copied into the rows of the smallest bucket that holds it; the rows past it keep whatever
  the last batch left there, which changes nothing for the real rows (every op of the vision
  tower works per image), and their embeddings are dropped.
- ORT's CUDA provider keeps graphs per calling thread, so every run of the session goes
  through one thread of this class's own: captured at load, replayed from there, whichever
  thread asks. A run without a graph id would capture graph 0 with whatever it was given, so
  batches past the largest bucket run with id -1 (no graph), in that thread too.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from moderator.cudart import CudaRuntime
from moderator.types import Embeddings, buckets

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["VisionGraphs"]

_NO_GRAPH: Final = "-1"  # ORT's gpu_graph_id that runs without capturing or replaying


class _Copies(Protocol):
    """The CUDA calls the graphs need (`CudaRuntime`; tests give a host-memory stand-in)."""

    def set_device(self, device_id: int) -> None: ...
    def create_stream(self) -> int: ...
    def destroy_stream(self, stream: int) -> None: ...
    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None: ...
    def copy_on_device(self, target: int, source: int, nbytes: int, stream: int) -> None: ...
    def synchronize(self, stream: int) -> None: ...


class VisionGraphs:
    """Runs a vision session opened with `enable_cuda_graph` (CUDA provider only).

    `pixels_name` / `output_name` are the session's input (n, S, S, 3) uint8 and output (n, D)
    float32. Batches up to the largest bucket (the first power of two >= `max_batch`) replay
    a graph; larger ones run without one. Calls from any thread are run one at a time in the
    graphs' own thread. `device` and `cuda` exist for tests on the CPU.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        device_id: int,
        image_size: int,
        embed_dim: int,
        max_batch: int,
        pixels_name: str,
        output_name: str,
        device: str = "cuda",
        cuda: _Copies | None = None,
    ) -> None:
        import onnxruntime as ort

        self._session = session
        self._device, self._device_id = device, device_id
        self._pixels_name, self._output_name = pixels_name, output_name
        self._image_shape = (image_size, image_size, 3)
        self._image_bytes = image_size * image_size * 3
        self.buckets = buckets(max_batch)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuda-graphs")
        self._cuda: _Copies = cuda or CudaRuntime()
        self._cuda.set_device(device_id)
        # The copies' own stream: no implicit ordering with other streams of the process.
        self._stream = self._cuda.create_stream()
        self._inputs: dict[int, Any] = {}
        self._outputs: dict[int, Any] = {}
        self._bindings: dict[int, Any] = {}
        self._options: dict[int, Any] = {}
        for graph_id, bucket in enumerate(self.buckets, start=1):  # 0 is ORT's default id
            inputs = ort.OrtValue.ortvalue_from_shape_and_type(
                (bucket, *self._image_shape), np.uint8, device, device_id
            )
            outputs = ort.OrtValue.ortvalue_from_shape_and_type(
                (bucket, embed_dim), np.float32, device, device_id
            )
            binding = session.io_binding()
            binding.bind_ortvalue_input(pixels_name, inputs)
            binding.bind_ortvalue_output(output_name, outputs)
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
            self._inputs[bucket], self._outputs[bucket] = inputs, outputs
            self._bindings[bucket], self._options[bucket] = binding, options
        self._plain = ort.RunOptions()
        self._plain.add_run_config_entry("gpu_graph_id", _NO_GRAPH)

    def bucket(self, count: int) -> int | None:
        """The smallest bucket holding `count` images; None past the largest (no graph)."""
        return next((b for b in self.buckets if b >= count), None)

    def encode_host(self, pixels: np.ndarray) -> Embeddings:
        """(n, S, S, 3) uint8 host pixels, C-contiguous, n >= 1."""
        return self._thread.submit(self._host, pixels).result()

    def encode_device(self, pointer: int, count: int) -> Embeddings:
        """`count` images, C-contiguous on this device at `pointer`, count >= 1. The caller
        has finished writing them (as for `ClipRuntime.encode_device_pixels`)."""
        return self._thread.submit(self._on_device, pointer, count).result()

    def warm_up(self) -> None:
        """Capture every bucket's graph now, in the graphs' thread (~5-30 ms each)."""
        for bucket in self.buckets:
            self.encode_host(np.zeros((bucket, *self._image_shape), np.uint8))

    def close(self) -> None:
        """Stop the graphs' thread and free the copies' stream (the buffers go with `self`)."""
        self._thread.shutdown(wait=True)
        self._cuda.destroy_stream(self._stream)

    # --- in the graphs' thread ----------------------------------------------------------

    def _host(self, pixels: np.ndarray) -> Embeddings:
        bucket = self.bucket(len(pixels))
        if bucket is None:
            binding = self._session.io_binding()
            binding.bind_cpu_input(self._pixels_name, pixels)
            return self._without_graph(binding)
        self._cuda.set_device(self._device_id)
        self._cuda.copy_to_device(self._inputs[bucket].data_ptr(), pixels, self._stream)
        return self._replay(bucket, len(pixels))

    def _on_device(self, pointer: int, count: int) -> Embeddings:
        bucket = self.bucket(count)
        if bucket is None:
            binding = self._session.io_binding()
            shape = [count, *self._image_shape]
            binding.bind_input(
                self._pixels_name, self._device, self._device_id, np.uint8, shape, pointer
            )
            return self._without_graph(binding)
        self._cuda.set_device(self._device_id)
        target = self._inputs[bucket].data_ptr()
        self._cuda.copy_on_device(target, pointer, count * self._image_bytes, self._stream)
        return self._replay(bucket, count)

    def _replay(self, bucket: int, count: int) -> Embeddings:
        self._cuda.synchronize(self._stream)  # the pixels are in before ORT's stream reads
        self._session.run_with_iobinding(self._bindings[bucket], self._options[bucket])
        rows: Embeddings = self._outputs[bucket].numpy()[:count]  # a fresh host copy
        return rows

    def _without_graph(self, binding: Any) -> Embeddings:
        """A batch larger than every bucket: a plain run, graph id -1, its output copied out
        before any graph runs again (ORT allocates it from the pool the graphs reuse)."""
        binding.bind_output(self._output_name, self._device, self._device_id)
        self._session.run_with_iobinding(binding, self._plain)
        rows: Embeddings = np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return rows
