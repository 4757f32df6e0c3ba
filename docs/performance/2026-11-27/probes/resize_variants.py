"""Probe (sixth lease): faster ways into the same-size resize graph's NCHW float layout.

resize_profile.py found 31 of the same-size graph's 52 µs of GPU per 1024×768 image in one
kernel: the Transpose of the stacked uint8 batch from NHWC to NCHW (ONNX Runtime's
Transpose3DKernel, whose 32-wide tiles are mostly idle with 3 channels). Each variant
below replaces the graph's front (stack → 2×2 box average in float32, NCHW) and keeps the
rest (antialiased linear to the draft size, round to uint8, bicubic, crop, NHWC). 64
random 1024×768 images already on GPU 0; each variant is timed over 20 runs and compared
with the first variant's output. Prints one JSON line per variant. (As run on the GPU in the
sixth lease, the list was transpose_uint8, split_concat, nhwc_resize, reduce_sum,
strided_slices; `uint8_slices_split` and `planar` came later. `planar` is what `serve` does
since the seventh lease: nvImageCodec decodes to channel planes, so the stack is already NCHW.)
"""

import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

import numpy as np  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from moderator.bench.decode import _serve_gpu_problem  # noqa: E402
from moderator.pipeline.decode.cpu import PreprocessSpec  # noqa: E402
from moderator.pipeline.decode.gpu import _resize_node, geometry, reduction  # noqa: E402

N, H, W, RUNS = 64, 768, 1024, 20
SPEC = PreprocessSpec.for_model(224, 224)
S = SPEC.image_size
H2, W2 = H // 2, W // 2


def const(name, values, dtype=TensorProto.INT64):
    values = list(np.asarray(values).ravel())
    return helper.make_tensor(name, dtype, [len(values)], values)


def front(variant):
    """Nodes from `stack` (N, H, W, 3) uint8 to `reduced` (N, 3, H/2, W/2) float32."""
    n = helper.make_node
    if variant == "planar":  # inputs decoded as planes: `stack` is (N, 3, H, W) already
        return [
            n("Cast", ["stack"], ["f"], to=TensorProto.FLOAT),
            n("Resize", ["f", "", "half"], ["reduced"], mode="linear",
              coordinate_transformation_mode="half_pixel"),
        ]
    if variant == "transpose_uint8":  # as serve did until the sixth lease
        return [
            n("Transpose", ["stack"], ["nchw"], perm=[0, 3, 1, 2]),
            n("Cast", ["nchw"], ["f"], to=TensorProto.FLOAT),
            n("Resize", ["f", "", "half"], ["reduced"], mode="linear",
              coordinate_transformation_mode="half_pixel"),
        ]
    if variant == "nhwc_resize":  # the box on NHWC, then a quarter-size float transpose
        return [
            n("Cast", ["stack"], ["f"], to=TensorProto.FLOAT),
            n("Resize", ["f", "", "half_nhwc"], ["r"], mode="linear",
              coordinate_transformation_mode="half_pixel"),
            n("Transpose", ["r"], ["reduced"], perm=[0, 3, 1, 2]),
        ]
    if variant == "split_concat":  # Split, then Concat: serve in the sixth lease
        return [
            n("Split", ["stack", "three_ones"], ["c0", "c1", "c2"], axis=3),
            *[n("Reshape", [f"c{i}", "nchw1"], [f"p{i}"]) for i in range(3)],
            n("Concat", ["p0", "p1", "p2"], ["nchw"], axis=1),
            n("Cast", ["nchw"], ["f"], to=TensorProto.FLOAT),
            n("Resize", ["f", "", "half"], ["reduced"], mode="linear",
              coordinate_transformation_mode="half_pixel"),
        ]
    if variant == "reduce_sum":  # the box as a ReduceSum over a 6-D view, in float16
        return [
            n("Cast", ["stack"], ["h16"], to=TensorProto.FLOAT16),
            n("Reshape", ["h16", "six_d"], ["v"]),
            n("ReduceSum", ["v", "box_axes"], ["s"], keepdims=0),
            n("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
            n("Mul", ["sf", "quarter"], ["q"]),
            n("Transpose", ["q"], ["reduced"], perm=[0, 3, 1, 2]),
        ]
    if variant == "strided_slices":  # four strided Slices and three Adds, NHWC float
        nodes = [n("Cast", ["stack"], ["f"], to=TensorProto.FLOAT)]
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            nodes.append(n("Slice", ["f", f"st{k}", "en_big", "hw_axes_nhwc", "steps2"], [f"s{k}"]))
        nodes += [
            n("Add", ["s0", "s1"], ["a01"]), n("Add", ["s2", "s3"], ["a23"]),
            n("Add", ["a01", "a23"], ["a"]), n("Mul", ["a", "quarter"], ["q"]),
            n("Transpose", ["q"], ["reduced"], perm=[0, 3, 1, 2]),
        ]
        return nodes
    if variant == "uint8_slices_split":  # strided Slices of uint8, each cast, added; NHWC
        nodes = []  # → NCHW by Split and Concat on the quarter-size float result
        for k in range(4):
            nodes += [
                n("Slice", ["stack", f"st{k}", "en_big", "hw_axes_nhwc", "steps2"], [f"s{k}"]),
                n("Cast", [f"s{k}"], [f"f{k}"], to=TensorProto.FLOAT),
            ]
        nodes += [
            n("Add", ["f0", "f1"], ["a01"]), n("Add", ["f2", "f3"], ["a23"]),
            n("Add", ["a01", "a23"], ["a"]), n("Mul", ["a", "quarter"], ["q"]),
            n("Split", ["q", "three_ones"], ["c0", "c1", "c2"], axis=3),
            *[n("Reshape", [f"c{i}", "nchw1_half"], [f"p{i}"]) for i in range(3)],
            n("Concat", ["p0", "p1", "p2"], ["reduced"], axis=1),
        ]
        return nodes
    raise ValueError(variant)


def model(variant):
    sizes, starts, ends = geometry(H, W, SPEC)
    half, draft = reduction(H, W, SPEC)
    sizes[0] = draft[0] = N
    n = helper.make_node
    shape = [3, H, W] if variant == "planar" else [H, W, 3]
    inputs = [helper.make_tensor_value_info(f"image_{i}", TensorProto.UINT8, shape) for i in range(N)]
    nodes = [n("Unsqueeze", [f"image_{i}", "axis0"], [f"u{i}"]) for i in range(N)]
    nodes.append(n("Concat", [f"u{i}" for i in range(N)], ["stack"], axis=0))
    nodes += front(variant)
    nodes += [
        n("Resize", ["reduced", "", "", "draft"], ["d"], mode="linear", antialias=1,
          coordinate_transformation_mode="half_pixel"),
        n("Add", ["d", "half_level"], ["dr"]),
        n("Cast", ["dr"], ["drafted"], to=TensorProto.UINT8),
        _resize_node("drafted", "sizes", "resized"),
        n("Slice", ["resized", "starts", "ends", "hw_axes"], ["crop"]),
        n("Transpose", ["crop"], ["pixels"], perm=[0, 2, 3, 1]),
    ]
    inits = [
        const("axis0", [0]), const("hw_axes", [2, 3]), const("hw_axes_nhwc", [1, 2]),
        const("half", half, TensorProto.FLOAT), const("half_nhwc", [1, 0.5, 0.5, 1], TensorProto.FLOAT),
        const("draft", draft), const("sizes", sizes), const("starts", starts), const("ends", ends),
        helper.make_tensor("half_level", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("quarter", TensorProto.FLOAT, [], [0.25]),
        const("three_ones", [1, 1, 1]), const("nchw1", [N, 1, H, W]), const("nchw1_half", [N, 1, H2, W2]),
        const("six_d", [N, H2, 2, W2, 2, 3]), const("box_axes", [2, 4]),
        const("en_big", [2 * H2, 2 * W2]), const("steps2", [2, 2]),
        *[const(f"st{k}", [dy, dx]) for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))],
    ]
    graph = helper.make_graph(nodes, variant, inputs,
                              [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [N, S, S, 3])],
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m.SerializeToString()


if __name__ == "__main__":
    device = os.environ.get("DEVICE", "cuda")
    if device == "cuda" and (problem := _serve_gpu_problem()):
        raise SystemExit(problem)
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    # Smooth-ish images: a random low-resolution field upsampled, plus noise.
    base = rng.integers(0, 256, (N, H // 16, W // 16, 3)).repeat(16, 1).repeat(16, 2)
    host = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    values = [ort.OrtValue.ortvalue_from_numpy(host[i], device, 0) for i in range(N)]
    planes = [
        ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(host[i].transpose(2, 0, 1)), device, 0)
        for i in range(N)
    ]
    out = ort.OrtValue.ortvalue_from_shape_and_type((N, S, S, 3), np.uint8, device, 0)
    providers = [("CUDAExecutionProvider", {"device_id": "0"})] if device == "cuda" else ["CPUExecutionProvider"]
    reference = None
    variants = os.environ.get("VARIANTS", "split_concat,planar,uint8_slices_split,split_concat,planar")
    for variant in variants.split(","):
        row = {"variant": variant}
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(model(variant), options, providers=providers)
            binding = session.io_binding()
            for i, v in enumerate(planes if variant == "planar" else values):
                binding.bind_ortvalue_input(f"image_{i}", v)
            binding.bind_ortvalue_output("pixels", out)
            for _ in range(3):
                session.run_with_iobinding(binding)
            t = time.perf_counter()
            for _ in range(RUNS if device == "cuda" else 1):
                session.run_with_iobinding(binding)
            got = out.numpy().astype(np.int16)
            row["us_per_image"] = round(1e6 * (time.perf_counter() - t) / (RUNS if device == "cuda" else 1) / N, 2)
            if reference is None:
                reference = got
            diff = np.abs(got - reference)
            row |= {"max_abs_vs_current": int(diff.max()), "mean_abs_vs_current": round(float(diff.mean()), 4)}
        except Exception as exc:  # a variant ORT cannot run here
            row["error"] = str(exc)[:300]
        print(json.dumps(row), flush=True)
