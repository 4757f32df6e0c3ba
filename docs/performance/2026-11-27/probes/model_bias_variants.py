"""Probe (fourth lease): how the fp16 ViT-B/32 export carries fc1's bias, batch 256, device
pixels, efficient attention (as `serve` runs it). Variants, each exported here:
  pad     the export's own fold: Pad the input with ones columns (the profile shows ORT's
          Pad kernel at 0.57 ms of a 6.8 ms batch)
  concat  the same fold, the ones columns joined with Concat instead of Pad
  nofold  HF's layout: MatMul + bias
Rates interleaved, twice each; then a kernel profile of each. Writes $OUT/model-bias.json."""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd())
import onnxruntime as ort  # noqa: E402

ort.preload_dlls()
import torch  # noqa: E402
from torch import nn  # noqa: E402

from moderator.bench.model import resolve_bench_model  # noqa: E402
from moderator.export import clip as clip_export  # noqa: E402

RES = {}
B = 256
bm = resolve_bench_model("b32", precision="fp16")
hf = str(bm.hf_dir)
dirs = {"pad": bm.onnx_dir}


def concat_forward(self, hidden):
    ones = hidden.new_ones(hidden.shape[:-1] + (clip_export._ONES,))
    inner = self.activation_fn(torch.matmul(torch.cat([hidden, ones], -1), self.fc1_weight))
    return self.fc2(inner)


pad_forward = clip_export._BiasFoldedMLP.forward
clip_export._BiasFoldedMLP.forward = concat_forward
dirs["concat"] = clip_export.export_clip(hf, __import__("pathlib").Path("/tmp/b32-concat"), precision="fp16", progress=lambda *_: None)
clip_export._BiasFoldedMLP.forward = pad_forward
dirs["nofold"] = clip_export.export_clip(hf, __import__("pathlib").Path("/tmp/b32-nofold"), precision="fp16", progress=lambda *_: None, fold_mlp_bias=False)

host = np.random.default_rng(0).integers(0, 256, (B, 224, 224, 3), dtype=np.uint8)
dev = torch.from_numpy(host).cuda()
out = torch.empty((B, 512), dtype=torch.float32, device="cuda")


def session(path):
    so = ort.SessionOptions()
    s = ort.InferenceSession(str(path / "vision.onnx"), so, providers=[("CUDAExecutionProvider", {"device_id": "0", "sdpa_kernel": "2"})])
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


runs = {name: session(path) for name, path in dirs.items()}
ref = None
for name, run in runs.items():
    run()
    got = out.cpu().numpy()
    ref = got if ref is None else ref
    RES[f"min_cosine_vs_pad_{name}"] = float((got * ref).sum(1).min())
for _ in range(2):
    for name, run in runs.items():
        RES.setdefault(f"rate_{name}", []).append(rate(run))
        print(name, RES[f"rate_{name}"], flush=True)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

for name, run in runs.items():
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run()
    rows = sorted(((e.device_time_total / 5, e.count // 5, e.key[:90]) for e in prof.key_averages()), reverse=True)
    RES[f"kernels_{name}"] = [f"{t / 1000:.3f}ms x{c} {k}" for t, c, k in rows[:12]]
    RES[f"kernel_total_ms_{name}"] = sum(r[0] for r in rows) / 1000
print(json.dumps(RES, indent=1), flush=True)
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
with open(os.path.join(os.environ.get("OUT", "/tmp/out"), "model-bias.json"), "w") as f:
    json.dump(RES, f, indent=1)
