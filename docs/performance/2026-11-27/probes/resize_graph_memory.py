"""Probe: peak memory of the same-size resize graph on the CPU provider without its arena, per
value of the stacked batch (16 images of H×W×3). `python resize_graph_memory.py VARIANT H W`:
`planar` is the current graph (inputs already planar, 3×H×W, as nvImageCodec decodes them since
the seventh lease); `split` and `transpose` need the sixth lease's code (commit f5044a7, inputs
H×W×3; `transpose` swaps its Split and Concat for the Transpose before them). Printed: bytes per
value, from the process's peak RSS before and after one run."""
import resource, sys
import numpy as np
import onnxruntime as ort
from onnx import helper
import moderator.pipeline.decode.gpu as g
from moderator.pipeline.decode.cpu import PreprocessSpec

variant, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if variant == "transpose":
    def planar(source, out, *, batched):
        if batched:
            return [helper.make_node("Transpose", [source], [out], perm=[0, 3, 1, 2])]
        raise SystemExit("batched only")
    g._planar_nodes = planar
N = 16
spec = PreprocessSpec.for_model(224, 224)
model = g.resize_crop_same_size_model(N, 224)
o = ort.SessionOptions(); o.enable_cpu_mem_arena = False; o.enable_mem_pattern = False
sess = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
shape = (3, h, w) if variant == "planar" else (h, w, 3)
imgs = [np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8) for i in range(N)]
sizes, starts, ends = g.geometry(h, w, spec); half, draft = g.reduction(h, w, spec)
sizes[0] = draft[0] = N
feeds = {f"image_{i}": im for i, im in enumerate(imgs)} | {"half": half, "draft": draft, "sizes": sizes, "starts": starts, "ends": ends}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sess.run(None, feeds)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(variant, h, w, "bytes per value:", round((peak - base) * 1024 / (N * h * w * 3), 2))
