"""Probe (for the eighth lease): do CUDA graphs per batch size pay at `serve`'s batch sizes?

The fp16 ViT-B/32 export as `serve` loads it (dynamic batch, efficient attention) against the
same graph with its batch fixed at load (`add_free_dimension_override_by_name`), without and
with ORT's CUDA graph (`enable_cuda_graph`, which needs every node on the GPU, hence the fixed
batch: one session per batch size). Pixels already on the GPU, output bound to the GPU, one
host copy of the embeddings per call as `serve` makes. Each variant is timed for SECONDS,
twice, interleaved, at batch sizes 1, 4, 16, 64 and 256; also the GPU memory each fixed-batch
session takes (weights are not shared between sessions). The fourth lease measured +1.1 % at
256 (`model_profile4.py`); at small batches launches are a larger share of a call.
Writes $OUT/cuda-graph-probe.json. `DEVICE=cpu` dry-runs the script on the CPU provider (no
graphs there: that variant reports ORT's error).
"""

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

DEVICE = os.environ.get("DEVICE", "cuda")
SECONDS = float(os.environ.get("SECONDS_EACH", "1.5"))
BATCHES = [int(b) for b in os.environ.get("BATCHES", "1,4,16,64,256").split(",")]

def _pow_export():
    """The `pow` variant, exported beside the bench's own (its parity is checked by export)."""
    import pathlib

    from moderator.export import clip as clip_export

    def forward(self, hidden):
        ones = hidden[..., : clip_export._ONES].pow(0)
        inner = self.activation_fn(torch.matmul(torch.cat([hidden, ones], -1), self.fc1_weight))
        return self.fc2(inner)

    own = clip_export._BiasFoldedMLP.forward
    clip_export._BiasFoldedMLP.forward = forward
    try:
        out = clip_export.export_clip(str(bench.hf_dir), pathlib.Path("/tmp/b32-pow"),
                                      precision="fp16", progress=lambda *_: None)
    finally:
        clip_export._BiasFoldedMLP.forward = own
    return str(out / "vision.onnx")


bench = resolve_bench_model("b32", precision="fp16")
EXPORTS = {"current": str(bench.onnx_dir / "vision.onnx"), "pow": _pow_export()}


def _free():
    return torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else 0


_shared = {}  # per export, the one dynamic-batch session with graphs, kept across batch sizes


def session(pixels, *, export, fixed, graph):
    """A run() for `pixels`. Dynamic batch with graphs: one session for every batch size, a
    graph per size under its own `gpu_graph_id` (what `serve` would want: the weights once);
    ORT accepts that only if no node of the graph falls back to the CPU."""
    batch = pixels.shape[0]
    shared = graph and not fixed
    so = ort.SessionOptions()
    if fixed:
        so.add_free_dimension_override_by_name("batch", batch)
    opts = {"device_id": "0", "sdpa_kernel": "2"}
    if graph:
        opts["enable_cuda_graph"] = "1"
    if DEVICE == "cpu":
        if graph:
            raise RuntimeError("no CUDA graphs on the CPU provider")
        providers = ["CPUExecutionProvider"]
    else:
        providers = [("CUDAExecutionProvider", opts)]
    free_before = _free()
    if shared and export in _shared:
        s = _shared[export]
    else:
        s = ort.InferenceSession(EXPORTS[export], so, providers=providers)
        if shared:
            _shared[export] = s
    options = ort.RunOptions()
    if shared:
        options.add_run_config_entry("gpu_graph_id", str(batch))
    out = torch.empty((batch, 512), dtype=torch.float32, device=DEVICE)
    b = s.io_binding()
    b.bind_input("pixels", DEVICE, 0, np.uint8, list(pixels.shape), pixels.data_ptr())
    b.bind_output("embeddings", DEVICE, 0, np.float32, list(out.shape), out.data_ptr())

    def run():
        s.run_with_iobinding(b, options)
        return out.cpu()

    first = time.perf_counter()
    run()  # a graph is captured here
    first = time.perf_counter() - first
    used_mib = (free_before - _free()) / 2**20
    return run, round(first, 3), round(used_mib)


def rate(run, batch):
    for _ in range(5):
        run()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < SECONDS:
        run()
        n += 1
    seconds = time.perf_counter() - t
    return {"img_s": round(n * batch / seconds), "ms_per_call": round(1000 * seconds / n, 3)}


results = {"batches": {}}
variants = {
    "dynamic": dict(export="current", fixed=False, graph=False),  # as serve runs it
    "fixed": dict(export="current", fixed=True, graph=False),
    "fixed+graph": dict(export="current", fixed=True, graph=True),
    "dynamic+graph": dict(export="current", fixed=False, graph=True),  # expected: refused
    "pow dynamic": dict(export="pow", fixed=False, graph=False),
    "pow dynamic+graph": dict(export="pow", fixed=False, graph=True),
}
for batch in BATCHES:
    row = {}
    runs = {}
    generator = torch.Generator().manual_seed(batch)
    pixels = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8, generator=generator)
    pixels = pixels.to(DEVICE)
    reference = None
    for name, kw in variants.items():
        try:
            run, first_s, mib = session(pixels, **kw)
            got = run().numpy()
            reference = got if reference is None else reference
            runs[name] = run
            row[name] = {"first_call_s": first_s, "session_mib": mib, "runs": [],
                         "max_abs_vs_dynamic": float(np.abs(got - reference).max())}
        except Exception as exc:  # e.g. ORT refusing the graph
            row[name] = {"error": str(exc)[:300]}
    for _ in range(2):
        for name, run in runs.items():
            row[name]["runs"].append(rate(run, batch))
    results["batches"][str(batch)] = row
    print(batch, json.dumps(row), flush=True)
    del runs
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
out_dir = os.environ.get("OUT", "/tmp/out")
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "cuda-graph-probe.json"), "w") as f:
    json.dump(results, f, indent=1)
