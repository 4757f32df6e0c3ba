"""The GPU path's host side: which images may take it, and the ONNX graphs that resize them.

The GPU decoder (`moderator.pipeline.decode.gpu`) decodes a JPEG at full size (nvImageCodec has
no DCT draft) as planar RGB, so the graphs need no channel shuffle. They bring it down to the
size the CPU path's (`moderator.pipeline.decode.cpu`) draft decodes at (`reduction`): a 2×2 box
average, then for 4× and 8× drafts an antialiased linear resize (Pillow's `reduce(2)`, then
BILINEAR). Then ONNX's Resize-18 (cubic, a = -0.5, antialias: Pillow's BICUBIC filter) and a
centre crop, i.e. resize-then-crop as the processor does. The reduction leaves the cubic filter
a quarter of the pixels or fewer to read, and keeps pixels ~0.3 levels from the CPU path's on
average (H200).

Only JPEGs the CPU path would treat the same way take the GPU path (`gpu_eligible`): RGB/YCbCr
or grey (not CMYK, not MPO), within the pixel limit, resize edge >= crop size (the graphs
resize then crop, and never pad). The rule lives here, beside the graphs whose limits it
states, rather than in the GPU module: the CPU decode workers ask it for every inline JPEG, and
this module imports neither CUDA nor ONNX Runtime (onnx itself only inside the builders), so a
worker stays light.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from PIL import Image

from moderator.pipeline.decode.cpu import PreprocessSpec, _crop_start, _resize_size

__all__ = [
    "geometry",
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
# (uint8), then float32 for the reduction. Peak measured on ONNX Runtime's CPU provider without
# its arena (16 images): 5.0 bytes with a 1/2 reduction and 8.0 without one (the float copies
# stay full size).
_SAME_SIZE_BYTES: Final = 2 << 30
_SAME_SIZE_COPY_BYTES: Final = 6
_SAME_SIZE_COPY_BYTES_UNREDUCED: Final = 10


_MAX_SEGMENTS: Final = 32  # camera JPEGs reach their first scan in ~10-20 segments
_MAX_FILL: Final = 16  # 0xFF fill bytes allowed before a marker


def header_is_short(data: bytes) -> bool:
    """Whether a JPEG's segments reach its first scan (SOS) within a few markers, stepping
    by each segment's length: a bound on what reading its header costs. Pillow's header
    parser walks fill bytes and empty markers one at a time, ~0.5 s per MB of them, which
    only a decode process may spend on an uploader's bytes, never the event loop."""
    pos, size = 2, len(data)
    for _ in range(_MAX_SEGMENTS):
        start = pos
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos == start or pos - start > _MAX_FILL + 1 or pos >= size:
            return False
        marker = data[pos]
        pos += 1
        if marker == 0xDA:  # start of scan: the header is over
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length follows
            continue
        if pos + 2 > size or (length := (data[pos] << 8) | data[pos + 1]) < 2:
            return False
        pos += length
    return False


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
    Resize of uint8 (checked against its CPU provider, which is right).
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
