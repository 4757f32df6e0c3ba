"""JPEG bytes → model-ready pixels in GPU memory: nvImageCodec decodes, ONNX Runtime resizes.

Why: with several service processes on one host, CPU decoding bounds end to end (a 1024×768
JPEG costs ~7 ms of a core; docs/performance.md). The resized batch never leaves the device:
the model reads it in place (`ClipRuntime.encode_device_pixels`). Measured on an H200 in
`bench decode`: 8.8–10.0k img/s for this path in one process, 11.7–12.1k in four, but at half
load a p99 of 0.6–1.3 s with 4 replicas on one GPU, against 81–214 ms (mostly under 100)
with CPU decoding, so `serve` uses it only when asked (`pipeline.gpu_decode`).

Where it differs from the CPU path (`moderator.pipeline.decode.cpu`): the JPEG is decoded at
full size (nvImageCodec has no DCT draft) as planar RGB, so the graphs need no channel shuffle, then
brought down to the size the CPU path's draft decodes at (`reduction`): a 2×2 box average, then
for 4× and 8× drafts an antialiased linear resize (Pillow's `reduce(2)`, then BILINEAR). Then
ONNX's Resize-18 (cubic, a = -0.5, antialias: Pillow's BICUBIC filter) and a centre crop, i.e.
resize-then-crop as the processor does. The reduction leaves the cubic filter a quarter of the
pixels or fewer to read, and keeps pixels ~0.3 levels from the CPU path's on average (H200).
Only JPEGs the CPU path would treat the same way come here (`gpu_eligible`): RGB/YCbCr or grey
(not CMYK, not MPO), within the pixel limit, resize edge >= crop size. nvImageCodec applies EXIF
orientation. Anything else, and any image the GPU fails on, goes back to the CPU path, which
gives bad images their usual `DecodeError`.
onnxruntime is imported only by the decoder: decode processes import `gpu_eligible` alone.

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
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from PIL import Image

from moderator.cudart import CudaRuntime
from moderator.errors import ModelError
from moderator.pipeline.decode.cpu import PreprocessSpec, _crop_start, _resize_size
from moderator.types import Embeddings, Pixels, buckets

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = [
    "Decoded",
    "DeviceBatch",
    "GpuJpegDecoder",
    "gpu_eligible",
    "reduction",
    "resize_crop_model",
    "resize_crop_same_size_model",
    "takes_same_size_graph",
]

_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_GPU_MODES: Final = frozenset({"RGB", "L"})
_ORT_IR_VERSION: Final = 9  # onnxruntime >= 1.15 reads it
# The same-size graph's whole-batch copies, per pixel and channel of the batch: the stack
# (uint8), then float32 for the reduction. Peak measured on the CPU provider without its arena
# (probes/resize_graph_memory.py, 16 images): 5.0 bytes with a 1/2 reduction and 8.0 without
# one (the float copies stay full size).
_SAME_SIZE_BYTES: Final = 2 << 30
_SAME_SIZE_COPY_BYTES: Final = 6
_SAME_SIZE_COPY_BYTES_UNREDUCED: Final = 10
_current = threading.local()  # .device: the GPU a decoder last made current in this thread


def gpu_eligible(data: bytes, spec: PreprocessSpec) -> bool:
    """Whether `data` may go to the GPU decoder: a JPEG the CPU path would decode the same way.

    Reads only the header (Pillow stops at the first scan), ~50 µs. The pixel limit is
    checked here because the GPU allocates the full-size image before anything else could.
    """
    if not data.startswith(_JPEG_MAGIC) or "JPEG" not in spec.allowed_formats:
        return False
    if len(data) > spec.max_bytes or spec.resize_shortest_edge < spec.image_size:
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            return (
                im.format == "JPEG"
                and im.mode in _GPU_MODES
                and 0 < width * height <= spec.max_pixels
            )
    except Exception:  # any header Pillow cannot read goes to the CPU path and its errors
        return False


def _blank_jpeg(size: int) -> bytes:
    """A grey size×size JPEG: the decode stage's warm-up input."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(out, "JPEG")
    return out.getvalue()


def _resize_node(source: str, sizes: str, out: str) -> Any:
    """Pillow's BICUBIC as ONNX Resize-18: cubic, a = -0.5, antialias when shrinking."""
    from onnx import helper

    return helper.make_node(
        "Resize",
        [source, "", "", sizes],
        [out],
        mode="cubic",
        cubic_coeff_a=-0.5,
        antialias=1,
        coordinate_transformation_mode="half_pixel",
    )


def _reduce_nodes(source: str, half: str, draft: str, out: str) -> list[Any]:
    """The CPU path's JPEG draft, on decoded uint8 pixels: scales `half` (1, 1, 0.5, 0.5) by
    linear interpolation without antialias, which at a scale of exactly 1/2 is a 2×2 box
    average (an odd last row or column is dropped), then sizes `draft` by an antialiased
    linear resize, then back to uint8, rounding half up as Pillow does. Scales of 1 and the
    input's own size change nothing: a draft that does not reduce that far.

    In float32: ONNX Runtime's CUDA provider (1.31) returns zeros or garbage for a linear
    Resize of uint8 (probes/resize_cuda_check.py), while its CPU provider is right.
    """
    from onnx import TensorProto, helper

    return [
        helper.make_node("Cast", [source], [f"{out}_float"], to=TensorProto.FLOAT),
        helper.make_node(
            "Resize",
            [f"{out}_float", "", half],
            [f"{out}_half"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node(
            "Resize",
            [f"{out}_half", "", "", draft],
            [f"{out}_draft"],
            mode="linear",
            antialias=1,
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Add", [f"{out}_draft", "half_level"], [f"{out}_rounding"]),
        helper.make_node("Cast", [f"{out}_rounding"], [out], to=TensorProto.UINT8),
    ]


def _model_bytes(name: str, nodes: list[Any], inputs: list[Any], count: int, size: int) -> bytes:
    from onnx import TensorProto, helper

    constants = [
        helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("hw_axes", TensorProto.INT64, [2], [2, 3]),
        # Cast to uint8 truncates: adding half a level first rounds (values are >= 0).
        helper.make_tensor("half_level", TensorProto.FLOAT, [], [0.5]),
    ]
    read = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [count, size, size, 3])],
        initializer=[c for c in constants if c.name in read],  # ORT warns of unused ones
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = _ORT_IR_VERSION
    return bytes(model.SerializeToString())


def resize_crop_model(count: int, size: int) -> bytes:
    """An ONNX graph taking `count` decoded images, each planar (3, h_i, w_i) uint8 of its own
    size, and writing their S×S centre crops as one (count, S, S, 3) uint8 batch.

    Per image i: `image_i`, and five small inputs the host computes from the image's shape:
    `half_i` (float scales) / `draft_i` (`reduction`), `sizes_i` (1, 3, new_h, new_w),
    `starts_i` / `ends_i` (crop window, rows and columns; `geometry`), all int64 but
    `half_i`. One run resizes a whole batch of mixed sizes with one Python call.
    """
    from onnx import TensorProto, helper  # onnx is needed only to build; ORT runs the bytes

    if count < 1 or size < 1:
        raise ValueError(f"count and size must be positive, got {count}, {size}")
    vi = helper.make_tensor_value_info
    inputs, nodes, crops = [], [], []
    for i in range(count):
        inputs += [
            vi(f"image_{i}", TensorProto.UINT8, [3, f"h{i}", f"w{i}"]),
            vi(f"half_{i}", TensorProto.FLOAT, [4]),
            vi(f"draft_{i}", TensorProto.INT64, [4]),
            vi(f"sizes_{i}", TensorProto.INT64, [4]),
            vi(f"starts_{i}", TensorProto.INT64, [2]),
            vi(f"ends_{i}", TensorProto.INT64, [2]),
        ]
        nodes += [
            helper.make_node("Unsqueeze", [f"image_{i}", "axis0"], [f"nchw_{i}"]),
            *_reduce_nodes(f"nchw_{i}", f"half_{i}", f"draft_{i}", f"drafted_{i}"),
            _resize_node(f"drafted_{i}", f"sizes_{i}", f"resized_{i}"),
            helper.make_node(
                "Slice", [f"resized_{i}", f"starts_{i}", f"ends_{i}", "hw_axes"], [f"crop_{i}"]
            ),
        ]
        crops.append(f"crop_{i}")
    nodes += [
        helper.make_node("Concat", crops, ["batch_nchw"], axis=0),
        helper.make_node("Transpose", ["batch_nchw"], ["pixels"], perm=[0, 2, 3, 1]),
    ]
    return _model_bytes(f"resize_crop_{count}", nodes, inputs, count, size)


def resize_crop_same_size_model(count: int, size: int) -> bytes:
    """`resize_crop_model` for `count` images of one shape (3, h, w): one Resize and one Slice
    over the stacked batch instead of one each per image, and one `half`, `draft` (count, 3,
    h, w), `sizes` (count, 3, new_h, new_w), `starts` and `ends` for all of them: `draft` and
    `sizes` carry the batch size.

    Why: per image, the mixed-size graph costs six bound inputs and about nine kernels; a
    batch of same-size photos (a camera's, or a site's upload size) needs one input each and
    a few kernels in all. Measured on an H200 for 128 1024×768 JPEGs before the reduction
    steps existed: 20.3k img/s resized vs 19.3k for the mixed graph.
    """
    from onnx import TensorProto, helper

    if count < 1 or size < 1:
        raise ValueError(f"count and size must be positive, got {count}, {size}")
    vi = helper.make_tensor_value_info
    inputs = [vi(f"image_{i}", TensorProto.UINT8, [3, "h", "w"]) for i in range(count)]
    inputs += [
        vi("half", TensorProto.FLOAT, [4]),
        vi("draft", TensorProto.INT64, [4]),
        vi("sizes", TensorProto.INT64, [4]),
        vi("starts", TensorProto.INT64, [2]),
        vi("ends", TensorProto.INT64, [2]),
    ]
    nodes = [
        helper.make_node("Unsqueeze", [f"image_{i}", "axis0"], [f"chw_{i}"]) for i in range(count)
    ]
    nodes += [
        helper.make_node("Concat", [f"chw_{i}" for i in range(count)], ["nchw"], axis=0),
        *_reduce_nodes("nchw", "half", "draft", "drafted"),
        _resize_node("drafted", "sizes", "resized"),
        helper.make_node("Slice", ["resized", "starts", "ends", "hw_axes"], ["crop"]),
        helper.make_node("Transpose", ["crop"], ["pixels"], perm=[0, 2, 3, 1]),
    ]
    return _model_bytes(f"resize_crop_same_size_{count}", nodes, inputs, count, size)


def takes_same_size_graph(
    count: int, bucket: int, shapes: Sequence[Sequence[int]], spec: PreprocessSpec
) -> bool:
    """Whether a batch goes through `resize_crop_same_size_model`: a full bucket of images of
    one shape (a bucket's spare inputs would be full-size resizes for nothing) whose
    whole-batch copies fit in `_SAME_SIZE_BYTES` of GPU memory."""
    if count < 2 or count != bucket or len(shapes) != count:
        return False
    first = tuple(int(d) for d in shapes[0])
    if any(tuple(int(d) for d in shape) != first for shape in shapes):
        return False
    half, _ = reduction(first[0], first[1], spec)
    per_value = _SAME_SIZE_COPY_BYTES if half[2] < 1 else _SAME_SIZE_COPY_BYTES_UNREDUCED
    return per_value * count * int(np.prod(first)) <= _SAME_SIZE_BYTES


def geometry(
    height: int, width: int, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`resize_crop_model`'s sizes, starts and ends for one (height, width) image."""
    new_w, new_h = _resize_size((width, height), spec.resize_shortest_edge)
    top, left = _crop_start(new_h, spec.image_size), _crop_start(new_w, spec.image_size)
    s = spec.image_size
    return (
        np.array([1, 3, new_h, new_w], np.int64),
        np.array([top, left], np.int64),
        np.array([top + s, left + s], np.int64),
    )


def reduction(height: int, width: int, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """The resize graphs' `half` (scales) and `draft` (sizes, 1, 3, h, w) for one decoded
    image: down to about the size Pillow's JPEG draft decodes it at for the CPU path (1/2,
    1/4 or 1/8, never below the resize target), by halving once, then the rest."""
    new_w, new_h = _resize_size((width, height), spec.resize_shortest_edge)
    ratio = min(width // new_w, height // new_h)
    scale = next(s for s in (8, 4, 2, 1) if ratio >= s)
    if scale == 1:
        return np.ones(4, np.float32), np.array([1, 3, height, width], np.int64)
    half_h, half_w = height // 2, width // 2  # what Resize gives at a scale of 1/2
    # Pillow's own draft size, ceil(side / scale); at 1/2 what halving gives (one row or
    # column fewer for an odd side), the second step then idle.
    draft = (half_h, half_w) if scale == 2 else (-(-height // scale), -(-width // scale))
    return np.array([1, 1, 0.5, 0.5], np.float32), np.array([1, 3, *draft], np.int64)


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
        # Off only to compare the two resize graphs (tests, probes).
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
        # µs of GPU per 1024×768 image (H200, probes/resize_profile.py, sixth lease).
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

        Why: first runs cost far more than the next (H200, probes/warm_probe.py: a decoder's
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
