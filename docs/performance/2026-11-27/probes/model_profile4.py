"""Probe (fourth lease): kernel time per batch of 256 for the current fp16 ViT-B/32 export
with the efficient attention kernel (as `serve` loads it), and the same with a CUDA graph.
Writes $OUT/model-profile4.json."""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd())
import onnxruntime as ort  # noqa: E402

ort.preload_dlls()
import torch  # noqa: E402

from moderator.bench.model import resolve_bench_model  # noqa: E402

RES = {}
B = 256
bm = resolve_bench_model("b32", precision="fp16")
path = str(bm.onnx_dir / "vision.onnx")
host = np.random.default_rng(0).integers(0, 256, (B, 224, 224, 3), dtype=np.uint8)
dev = torch.from_numpy(host).cuda()
out = torch.empty((B, 512), dtype=torch.float32, device="cuda")


def session(graph):
    so = ort.SessionOptions()
    so.add_free_dimension_override_by_name("batch", B)
    opts = {"device_id": "0", "sdpa_kernel": "2"}
    if graph:
        opts["enable_cuda_graph"] = "1"
    s = ort.InferenceSession(path, so, providers=[("CUDAExecutionProvider", opts)])
    b = s.io_binding()
    b.bind_input("pixels", "cuda", 0, np.uint8, list(dev.shape), dev.data_ptr())
    b.bind_output("embeddings", "cuda", 0, np.float32, list(out.shape), out.data_ptr())
    return lambda: (s.run_with_iobinding(b), out.cpu())


def rate(run, seconds=4.0):
    for _ in range(5):
        run()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        run()
        n += 1
    return round(n * B / (time.perf_counter() - t))


for graph in (False, True, False, True):
    key = f"rate_graph={graph}"
    RES.setdefault(key, []).append(rate(session(graph)))
    print(key, RES[key], flush=True)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

run = session(False)
run()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        run()
rows = sorted(
    ((e.device_time_total / 5, e.count // 5, e.key[:90]) for e in prof.key_averages()), reverse=True
)
RES["kernels"] = [f"{t / 1000:.3f}ms x{c} {k}" for t, c, k in rows[:20]]
RES["kernel_total_ms"] = sum(r[0] for r in rows) / 1000
print(json.dumps(RES, indent=1), flush=True)
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
with open(os.path.join(os.environ.get("OUT", "/tmp/out"), "model-profile4.json"), "w") as f:
    json.dump(RES, f, indent=1)
