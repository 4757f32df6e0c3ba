"""Probe (fifth lease): the reduction's Resize nodes on ONNX Runtime's CUDA provider vs its
CPU provider, one at a time, uint8 and float32."""
import os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
import onnxruntime as ort
from onnx import TensorProto, helper

ort.preload_dlls()
rng = np.random.default_rng(0)
img = rng.integers(0, 255, (1, 3, 768, 1024), dtype=np.uint8)
for dtype, np_t in ((TensorProto.UINT8, np.uint8), (TensorProto.FLOAT, np.float32)):
    for name, kind, aa, arg in (("linear scales 0.5", "scales", 0, np.array([1, 1, 0.5, 0.5], np.float32)),
                                ("linear aa sizes", "sizes", 1, np.array([1, 3, 192, 256], np.int64)),
                                ("linear sizes 1/2", "sizes", 0, np.array([1, 3, 384, 512], np.int64))):
        vi = helper.make_tensor_value_info
        ins = [vi("x", dtype, [1, 3, 768, 1024]), vi("a", TensorProto.FLOAT if kind == "scales" else TensorProto.INT64, [4])]
        inputs = ["x", "", "a"] if kind == "scales" else ["x", "", "", "a"]
        node = helper.make_node("Resize", inputs, ["y"], mode="linear", antialias=aa, coordinate_transformation_mode="half_pixel")
        g = helper.make_graph([node], "g", ins, [vi("y", dtype, None)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]); m.ir_version = 9
        b = m.SerializeToString()
        x = img.astype(np_t)
        outs = []
        for prov in ("CUDAExecutionProvider", "CPUExecutionProvider"):
            try:
                s = ort.InferenceSession(b, providers=[prov])
                outs.append(s.run(None, {"x": x, "a": arg})[0].astype(np.float64))
            except Exception as exc:
                outs.append(None); print(name, prov, "failed", str(exc)[:200])
        if all(o is not None for o in outs):
            a, c = outs
            print(np_t.__name__, name, a.shape, c.shape, "mean abs diff", np.abs(a - c).mean() if a.shape == c.shape else "shape differs", "cuda mean", a.mean(), "cpu mean", c.mean())
