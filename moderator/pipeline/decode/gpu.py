"""JPEG bytes → model-ready pixels in GPU memory: nvImageCodec decodes, ONNX Runtime resizes.

Why: with several service processes on one host, CPU decoding bounds end to end (a 1024×768
JPEG costs ~7 ms of a core; docs/performance.md). The resized batch never leaves the device:
the model reads it in place (`ClipRuntime.encode_device_pixels`). Measured on an H200 in
`bench decode`: 8.8–10.0k img/s for this path in one process, 11.7–12.1k in four, but at half
load a p99 of 0.6–1.3 s with 4 replicas on one GPU, against 81–214 ms (mostly under 100)
with CPU decoding, so `serve` uses it only when asked (`pipeline.gpu_decode`).

The JPEG is decoded at full size as planar RGB, then resized and centre-cropped by the graphs
in `moderator.pipeline.decode.resize`, which also says which JPEGs come here (`gpu_eligible`)
and how the pixels differ from the CPU path's. nvImageCodec applies EXIF orientation. Any
image the GPU fails on goes back to the CPU path, which gives bad images their usual
`DecodeError`.

Ordering: two CUDA streams per decoder. nvImageCodec decodes on the first and the host waits
for it; the resize session (`user_compute_stream`) and the host-image copies run on the
second, which has drained before `place` returns, so the model session can then read the
batch from its own stream.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from moderator.cudart import CudaRuntime
from moderator.errors import ModelError
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.resize import (
    geometry,
    reduction,
    resize_crop_model,
    resize_crop_same_size_model,
    takes_same_size_graph,
)
from moderator.types import Embeddings, Pixels, buckets

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["Decoded", "DeviceBatch", "GpuJpegDecoder"]

_current = threading.local()  # .device: the GPU a decoder last made current in this thread


def _blank_jpeg(size: int) -> bytes:
    """A grey size×size JPEG: the decode stage's warm-up input."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(out, "JPEG")
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class DeviceBatch:
    """`count` model-ready images in GPU memory, readable through `__cuda_array_interface__`.

    `rows[i]` is the batch row of the i-th item given to `GpuJpegDecoder.fill`, or None when
    the GPU could not decode it (`failures[i]` says why); the caller decodes those on the CPU.
    """

    pointer: int
    count: int
    size: int
    rows: list[int | None]
    failures: dict[int, str]

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": (self.count, self.size, self.size, 3),
            "typestr": "|u1",
            "data": (self.pointer, False),
            "strides": None,
            "version": 3,
        }


@dataclass(frozen=True, slots=True)
class _Image:
    """A decoded image and what its `__cuda_array_interface__` said, read once.

    Why once: each read of the interface leaves and retakes the GIL three times inside
    nvImageCodec, and retaking it from a busy event loop can cost a switch interval (5 ms).
    """

    image: Any  # nvImageCodec's Image: owns the GPU memory at `pointer`
    height: int
    width: int
    pointer: int


@dataclass(slots=True)
class Decoded:
    """A batch after the decode stage: full-size images on the GPU, host pixels untouched.

    `images[k]` is the decoded image of item `encoded[k]`; `failures` maps item indices to
    why the GPU did not decode them. Holds GPU memory until `place` has used it.
    """

    items: Sequence[Pixels | bytes]
    encoded: list[int]
    images: list[_Image]
    failures: dict[int, str]


class GpuJpegDecoder:
    """Fills a device batch from JPEG bytes (decoded on the GPU) and host pixels (copied up).

    Two stages, each on its own CUDA stream, so that decoding batch k+1 on the JPEG engines
    can overlap resizing and embedding batch k on the SMs (measured on an H200 as separate
    steps: decode 12.8k img/s, resize 18.1k; one after the other 7.8k):
    - `decode` (nvImageCodec): one thread at a time;
    - `place` / `embed_decoded` (resize, host copies, the model): one thread at a time, as
      they share the one device buffer that each call overwrites.
    `fill` and `embed` run both stages in the calling thread.
    """

    def __init__(
        self,
        spec: PreprocessSpec,
        *,
        device_id: int = 0,
        max_batch: int = 64,
        cpu_threads: int = 2,
    ) -> None:
        import onnxruntime as ort

        try:
            from nvidia import nvimgcodec
        except ImportError as exc:
            raise ModelError(
                "GPU JPEG decoding needs nvImageCodec: pip install nvidia-nvimgcodec-cu13"
            ) from exc
        self.spec = spec
        self.device_id = device_id
        self.max_batch = max_batch
        self._buckets = buckets(max_batch)
        self._decode_stream = self._place_stream = 0
        self._decode_lock = threading.Lock()
        self._place_lock = threading.RLock()  # `embed_decoded` holds it across the model
        self._sessions: dict[tuple[int, bool], ort.InferenceSession] = {}
        # Off only to compare the two resize graphs (tests).
        self.same_size_resize = True
        try:
            self._cuda = CudaRuntime()
            self._cuda.set_device(device_id)
            self._decode_stream = self._cuda.create_stream()
            self._place_stream = self._cuda.create_stream()
            self._open(nvimgcodec, ort, cpu_threads)
        except Exception as exc:  # nvImageCodec, CUDA and ORT raise their own types
            self.close()
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"the GPU JPEG decoder cannot start: {exc}") from exc

    def _open(self, nvimgcodec: Any, ort: Any, cpu_threads: int) -> None:
        kinds = nvimgcodec.BackendKind
        self._decoder = nvimgcodec.Decoder(
            device_id=self.device_id,
            # Its default is a thread per core in every process; the engines need few.
            max_num_cpu_threads=cpu_threads,
            # Hardware engines first; the CUDA (hybrid) decoder takes what they refuse, e.g.
            # progressive scans. No CPU backend: the CPU path is ours, with its own errors.
            backends=[
                nvimgcodec.Backend(kinds.HW_GPU_ONLY),
                nvimgcodec.Backend(kinds.GPU_ONLY),
                nvimgcodec.Backend(kinds.HYBRID_CPU_GPU),
            ],
        )
        # Planar (3, h, w): the resize graphs read channel planes. Interleaved output made them
        # split the channels apart and join them again first, ~16 of the same-size graph's 37
        # µs of GPU per 1024×768 image (measured on an H200).
        self._params = nvimgcodec.DecodeParams(
            color_spec=nvimgcodec.ColorSpec.SRGB,
            sample_format=nvimgcodec.SampleFormat.P_RGB,
            apply_exif_orientation=True,
        )
        s = self.spec.image_size
        self._slot = s * s * 3
        self._buffer = ort.OrtValue.ortvalue_from_shape_and_type(
            (self._buckets[-1], s, s, 3), np.uint8, "cuda", self.device_id
        )
        # Stands in for images a bucket has no item for: resized from S×S, cropped to S×S.
        self._filler = ort.OrtValue.ortvalue_from_numpy(
            np.zeros((3, s, s), np.uint8), "cuda", self.device_id
        )
        same = np.array([1, 3, s, s], np.int64)
        ones = np.ones(4, np.float32)
        self._filler_geometry = (ones, same, same, np.array([0, 0], np.int64), same[2:])
        for bucket in self._buckets:  # built now: a first use must not pay ~0.1 s per size
            self._session(bucket, same_size=False)
            if bucket > 1:
                self._session(bucket, same_size=True)

    def _on_device(self) -> None:
        """Make this GPU current in the calling thread, unless a decoder already did. ONNX
        Runtime sets its session's device when it runs, so a thread keeps to one GPU, as the
        batch workers do."""
        if getattr(_current, "device", None) != self.device_id:
            self._cuda.set_device(self.device_id)
            _current.device = self.device_id

    def to_host(self, batch: DeviceBatch) -> Pixels:
        """A host copy of `batch` (for checks and tests; the service never needs it)."""
        with self._place_lock:
            pixels: Pixels = self._buffer.numpy()[: batch.count]
            return pixels

    def close(self) -> None:
        self._sessions.clear()
        for stream in (self._decode_stream, self._place_stream):
            if stream:
                self._cuda.destroy_stream(stream)
        self._decode_stream = self._place_stream = 0

    def _session(self, count: int, *, same_size: bool) -> ort.InferenceSession:
        import onnxruntime as ort

        session = self._sessions.get((count, same_size))
        if session is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # Memcpy-node warnings for the CPU-side sizes
            # Every node runs on the GPU: a CPU thread pool would only spin between runs.
            options.intra_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            cuda = {
                "device_id": str(self.device_id),
                "user_compute_stream": str(self._place_stream),
            }
            build = resize_crop_same_size_model if same_size else resize_crop_model
            session = ort.InferenceSession(
                build(count, self.spec.image_size),
                sess_options=options,
                providers=[("CUDAExecutionProvider", cuda)],
            )
            self._sessions[(count, same_size)] = session
        return session

    # --- the two stages ---------------------------------------------------------------------

    def decode(self, items: Sequence[Pixels | bytes]) -> Decoded:
        """Stage 1: decode the `bytes` items on the GPU; returns when they are decoded."""
        if len(items) > self.max_batch:
            raise ValueError(f"{len(items)} items, more than max_batch {self.max_batch}")
        encoded = [i for i, item in enumerate(items) if isinstance(item, bytes)]
        failures: dict[int, str] = {}
        images: list[_Image] = []
        kept: list[int] = []
        if encoded:
            with self._decode_lock:
                self._on_device()
                results = self._decode([item for item in items if isinstance(item, bytes)])
                self._cuda.synchronize(self._decode_stream)
            for index, (image, problem) in zip(encoded, results, strict=True):
                if image is not None:
                    kept.append(index)
                    images.append(image)
                else:
                    failures[index] = problem or "GPU decoder could not decode it"
        return Decoded(items, kept, images, failures)

    def place(self, decoded: Decoded) -> DeviceBatch:
        """Stage 2: resize and crop the decoded images into the device batch, copy the host
        pixels after them; returns when the batch is ready."""
        with self._place_lock:
            self._on_device()
            items = decoded.items
            rows: list[int | None] = [None] * len(items)
            base = self._buffer.data_ptr()
            if decoded.images:
                self._resize(decoded.images, base)
                for row, index in enumerate(decoded.encoded):
                    rows[index] = row
            row = len(decoded.images)
            hosts = [i for i, item in enumerate(items) if not isinstance(item, bytes)]
            if hosts:
                # One copy for all of them: one call instead of one per image.
                pixels = np.stack([items[i] for i in hosts]).astype(np.uint8, copy=False)
                s = self.spec.image_size
                if pixels.shape[1:] != (s, s, 3):
                    raise ValueError(f"host pixels must be (S, S, 3), got {pixels.shape[1:]}")
                self._cuda.copy_to_device(base + row * self._slot, pixels, self._place_stream)
                for index in hosts:
                    rows[index] = row
                    row += 1
            self._cuda.synchronize(self._place_stream)
            decoded.images = []  # the full-size images are free once the stream drained
            return DeviceBatch(base, row, self.spec.image_size, rows, decoded.failures)

    def embed_decoded(
        self, decoded: Decoded, encode: Callable[[DeviceBatch], Embeddings]
    ) -> tuple[Embeddings, dict[int, str]]:
        """Stage 2 and the model (`encode` reads the batch in place) before the buffer can be
        refilled: one embedding row per item, and {index: why} for bytes not decoded."""
        with self._place_lock:
            batch = self.place(decoded)
            if batch.count == 0:
                return np.zeros((len(decoded.items), 0), np.float32), batch.failures
            rows = encode(batch)
        out = np.zeros((len(decoded.items), rows.shape[1]), np.float32)
        for index, row in enumerate(batch.rows):
            if row is not None:
                out[index] = rows[row]
        return out, batch.failures

    def fill(self, items: Sequence[Pixels | bytes]) -> DeviceBatch:
        """Both stages in this thread: decoded images first, then host images."""
        return self.place(self.decode(items))

    def embed(
        self, items: Sequence[Pixels | bytes], encode: Callable[[DeviceBatch], Embeddings]
    ) -> tuple[Embeddings, dict[int, str]]:
        """Both stages and the model in this thread (see `embed_decoded`)."""
        return self.embed_decoded(self.decode(items), encode)

    # --- warm-up ------------------------------------------------------------------------

    def warm_up(self, encode: Callable[[DeviceBatch], Embeddings] | None = None) -> None:
        """Each stage's first runs now, not on the first events: nvImageCodec over a full batch
        of small JPEGs, every resize graph, and `encode` (the model) at every batch size up to
        `max_batch`. First runs at photo sizes (ORT's memory arena growing) stay.

        Why: first runs cost far more than the next (measured on an H200: a decoder's
        first batch 0.71 s, the graphs' first runs 0.12 s; then 3 ms and 15–19 ms, in the same
        thread or another). A fresh replica met them one by one as batch sizes turned up, and
        events waited behind them: the half-load p99 was 2.1 s without this, 0.63–0.83 s with
        it. Raises `ModelError` if a stage fails.
        """
        s = self.spec.image_size
        try:
            decoded = self.decode([_blank_jpeg(s)] * self.max_batch)
            if decoded.failures:
                raise ModelError(
                    f"it refused a plain JPEG: {next(iter(decoded.failures.values()))}"
                )
            with self._place_lock:
                self._on_device()
                base = self._buffer.data_ptr()
                filler = _Image(None, s, s, self._filler.data_ptr())
                for bucket in self._buckets:
                    self._resize_each([filler], bucket, base)
                    if bucket > 1:
                        self._resize_same_size([filler] * bucket, base)
                self._cuda.synchronize(self._place_stream)
                if encode is not None:  # it sees a batch's own count, not its bucket: each once
                    for count in range(1, self.max_batch + 1):
                        encode(DeviceBatch(base, count, s, list(range(count)), {}))
        except Exception as exc:  # nvImageCodec, CUDA and ORT raise their own types
            raise ModelError(f"the GPU JPEG decoder failed its warm-up: {exc}") from exc

    def _decode(self, data: Sequence[bytes]) -> list[tuple[_Image | None, str | None]]:
        """nvImageCodec over the batch: (image, None) or (None, why) per item."""
        try:
            images = self._decoder.decode(
                list(data), params=self._params, cuda_stream=self._decode_stream
            )
        except Exception as exc:  # the whole call failed: every item goes to the CPU
            return [(None, f"GPU decode failed: {exc}")] * len(data)
        out: list[tuple[_Image | None, str | None]] = []
        for image in images:
            if image is None:
                out.append((None, "GPU decoder could not decode it"))
                continue
            cai = image.__cuda_array_interface__  # the only read: see `_Image`
            shape = tuple(int(d) for d in cai["shape"])
            if cai["typestr"] != "|u1" or len(shape) != 3 or shape[0] != 3:
                out.append((None, f"GPU decoder gave {cai['typestr']} {shape}, not planar RGB"))
            elif cai.get("strides") not in (None, (shape[1] * shape[2], shape[2], 1)):
                out.append((None, f"GPU decoder gave padded planes {cai['strides']}"))
            else:
                out.append((_Image(image, shape[1], shape[2], int(cai["data"][0])), None))
        return out

    def _resize(self, images: Sequence[_Image], base: int) -> None:
        count = len(images)
        bucket = next(b for b in self._buckets if b >= count)
        shapes = [(image.height, image.width, 3) for image in images]
        if self.same_size_resize and takes_same_size_graph(count, bucket, shapes, self.spec):
            self._resize_same_size(images, base)
        else:
            self._resize_each(images, bucket, base)

    def _resize_same_size(self, images: Sequence[_Image], base: int) -> None:
        """A full bucket of images of one shape through the same-size graph."""
        bucket = len(images)
        session = self._session(bucket, same_size=True)
        binding = session.io_binding()
        height, width = images[0].height, images[0].width
        shape = [3, height, width]
        for i, image in enumerate(images):  # a full bucket: no spare inputs
            binding.bind_input(f"image_{i}", "cuda", self.device_id, np.uint8, shape, image.pointer)
        sizes, starts, ends = geometry(height, width, self.spec)
        half, draft = reduction(height, width, self.spec)
        sizes[0] = draft[0] = bucket
        binding.bind_cpu_input("half", half)
        binding.bind_cpu_input("draft", draft)
        binding.bind_cpu_input("sizes", sizes)
        binding.bind_cpu_input("starts", starts)
        binding.bind_cpu_input("ends", ends)
        self._run_into(session, binding, bucket, base)

    def _resize_each(self, images: Sequence[_Image], bucket: int, base: int) -> None:
        """Up to `bucket` images of any shapes through the per-image graph; the filler takes
        the spare inputs."""
        count = len(images)
        session = self._session(bucket, same_size=False)
        binding = session.io_binding()
        s = self.spec.image_size
        for i in range(bucket):
            if i < count:
                height, width, pointer = images[i].height, images[i].width, images[i].pointer
                half, draft = reduction(height, width, self.spec)
                sizes, starts, ends = geometry(height, width, self.spec)
            else:
                height = width = s
                pointer = self._filler.data_ptr()
                half, draft, sizes, starts, ends = self._filler_geometry
            binding.bind_input(
                f"image_{i}", "cuda", self.device_id, np.uint8, [3, height, width], pointer
            )
            binding.bind_cpu_input(f"half_{i}", half)
            binding.bind_cpu_input(f"draft_{i}", draft)
            binding.bind_cpu_input(f"sizes_{i}", sizes)
            binding.bind_cpu_input(f"starts_{i}", starts)
            binding.bind_cpu_input(f"ends_{i}", ends)
        self._run_into(session, binding, bucket, base)

    def _run_into(self, session: Any, binding: Any, bucket: int, base: int) -> None:
        s = self.spec.image_size
        binding.bind_output("pixels", "cuda", self.device_id, np.uint8, [bucket, s, s, 3], base)
        session.run_with_iobinding(binding)
