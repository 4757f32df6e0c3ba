"""Probe (throwaway): CLIP's resize + centre crop as a two-node ONNX graph that ORT can run
where the decoded image already is (next to a GPU JPEG decoder), instead of in torch.

    python resize_graph.py cpu   # parity with Pillow's BICUBIC resize-then-crop (HF's PIL path)
    python resize_graph.py gpu   # + nvImageCodec decode → this graph on the CUDA provider

The graph takes one decoded image, uint8 HWC of any size, plus the target size and the crop
window that the host computes with moderator.pipeline.decode.cpu's own geometry. It runs Resize-18 (cubic,
a = -0.5, antialias: the filter ORT copied from Pillow) and then Slice, and writes uint8 NHWC
(1, S, S, 3) that can be bound straight into a slot of the model's input batch.
"""
import io
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from PIL import Image

sys.path.insert(0, os.getcwd())
from moderator.bench.images import bench_images  # noqa: E402
from moderator.pipeline.decode.cpu import _crop_start, _resize_size  # noqa: E402

RES = {}
S = 224


def rec(k, v):
    RES[k] = v
    print(k, json.dumps(v), flush=True)


def build() -> bytes:
    vi = helper.make_tensor_value_info
    inputs = [
        vi("image", TensorProto.UINT8, ["h", "w", 3]),
        vi("sizes", TensorProto.INT64, [4]),  # (1, 3, new_h, new_w)
        vi("starts", TensorProto.INT64, [2]),  # crop top, left
        vi("ends", TensorProto.INT64, [2]),
    ]
    out = vi("pixels", TensorProto.UINT8, [1, "s", "s", 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    nodes = [
        helper.make_node("Transpose", ["image"], ["chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "zero"], ["nchw"]),
        helper.make_node("Resize", ["nchw", "", "", "sizes"], ["resized"], mode="cubic",
                         cubic_coeff_a=-0.5, antialias=1,
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Slice", ["resized", "starts", "ends", "axes"], ["crop"]),
        helper.make_node("Transpose", ["crop"], ["pixels"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(nodes, "resize_crop", inputs, [out], initializer=[axes, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def geometry(h, w):
    nw, nh = _resize_size((w, h), S)
    top, left = _crop_start(nh, S), _crop_start(nw, S)
    return (np.array([1, 3, nh, nw], np.int64), np.array([top, left], np.int64),
            np.array([top + S, left + S], np.int64), (nw, nh, top, left))


def pil_reference(rgb):
    h, w = rgb.shape[:2]
    nw, nh, top, left = geometry(h, w)[3]
    im = Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BICUBIC)
    return np.array(im)[top:top + S, left:left + S]


def cpu(n=16):
    s = ort.InferenceSession(build(), providers=["CPUExecutionProvider"])
    diffs, times = [], []
    for b in bench_images(n, png_fraction=0.0, seed=2):
        rgb = np.array(Image.open(io.BytesIO(b.data)).convert("RGB"))
        sizes, starts, ends, _ = geometry(*rgb.shape[:2])
        t = time.perf_counter()
        got = s.run(None, {"image": rgb, "sizes": sizes, "starts": starts, "ends": ends})[0][0]
        times.append(time.perf_counter() - t)
        d = np.abs(got.astype(np.int16) - pil_reference(rgb).astype(np.int16))
        diffs.append((int(d.max()), float(d.mean())))
    rec("cpu_vs_pillow_max_mean", {"max": max(x[0] for x in diffs),
                                   "mean": round(float(np.mean([x[1] for x in diffs])), 4)})
    rec("cpu_ms_per_image", round(1e3 * float(np.median(times)), 2))


def gpu(n=256, batch=128, seconds=3.0):
    from nvidia import nvimgcodec

    ort.preload_dlls()
    s = ort.InferenceSession(build(), providers=[("CUDAExecutionProvider", {"device_id": "0"})])
    imgs = [b.data for b in bench_images(n, png_fraction=0.0, seed=3)]
    dec = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
    out = ort.OrtValue.ortvalue_from_shape_and_type((batch, S, S, 3), np.uint8, "cuda", 0)
    base, slot = out.data_ptr(), S * S * 3

    def run_batch(chunk):
        images = dec.decode(chunk)
        for i, im in enumerate(images):
            cai = im.__cuda_array_interface__
            h, w = int(cai["shape"][0]), int(cai["shape"][1])
            sizes, starts, ends, _ = geometry(h, w)
            b = s.io_binding()
            b.bind_input("image", "cuda", 0, np.uint8, [h, w, 3], int(cai["data"][0]))
            b.bind_cpu_input("sizes", sizes)
            b.bind_cpu_input("starts", starts)
            b.bind_cpu_input("ends", ends)
            b.bind_output("pixels", "cuda", 0, np.uint8, [1, S, S, 3], base + i * slot)
            s.run_with_iobinding(b)
        return images

    chunks = [imgs[i:i + batch] for i in range(0, n, batch)]
    images = run_batch(chunks[0])  # warm-up, and the parity sample
    got = out.numpy()
    d = [np.abs(got[i].astype(np.int16) - pil_reference(np.asarray(images[i].cpu())).astype(np.int16))
         for i in range(4)]
    rec("gpu_vs_pillow_on_the_same_decode", {"max": int(max(x.max() for x in d)),
                                             "mean": round(float(np.mean([x.mean() for x in d])), 4)})
    done, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for c in chunks:
            run_batch(c)
            done += len(c)
    out.numpy()  # waits for the last run
    rec("gpu_decode_resize_img_s", round(done / (time.perf_counter() - t)))
    done, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for c in chunks:
            dec.decode(c)
            done += len(c)
    rec("gpu_decode_only_img_s", round(done / (time.perf_counter() - t)))


if __name__ == "__main__":
    try:
        cpu()
        if sys.argv[1:] == ["gpu"]:
            gpu()
    finally:
        folder = os.environ.get("OUT", "/tmp/out")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "resize-graph.json"), "w") as f:
            json.dump(RES, f, indent=1)
