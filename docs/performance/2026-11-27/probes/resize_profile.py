"""Probe (sixth lease): the GPU time of `serve`'s resize graph, kernel by kernel.

The decode-modes probe found the resize stage GPU-bound at ~17.5k img/s (~57 µs of GPU per
1024×768 JPEG), about as fast in four processes as in one. This decodes one batch of 64
bench JPEGs, then runs the resize (same-size graph, then the per-image graph) 10 times each
under torch.profiler (CUPTI sees ONNX Runtime's kernels) and prints GPU µs per image by
kernel. Prints JSON lines.
"""

import json
import os
import sys

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from moderator.bench.decode import _serve_gpu_problem  # noqa: E402
from moderator.bench.images import bench_images  # noqa: E402
from moderator.pipeline.decode.cpu import PreprocessSpec  # noqa: E402
from moderator.pipeline.decode.gpu import GpuJpegDecoder  # noqa: E402

if problem := _serve_gpu_problem():
    raise SystemExit(problem)
BATCH, RUNS = 64, 10
decoder = GpuJpegDecoder(PreprocessSpec.for_model(224, 224), device_id=0, max_batch=BATCH)
jpegs = [b.data for b in bench_images(BATCH, png_fraction=0.0, seed=3)]
images = decoder.decode(jpegs).images
shapes = sorted({(i.height, i.width) for i in images})
print(json.dumps({"shapes": shapes}))
base = decoder._buffer.data_ptr()
for name, run in (
    ("same_size", lambda: decoder._resize_same_size(images, base)),
    ("each", lambda: decoder._resize_each(images, BATCH, base)),
):
    if name == "same_size" and len(shapes) != 1:
        continue
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(RUNS):
            run()
        decoder._cuda.synchronize(decoder._place_stream)
        torch.cuda.synchronize()
    rows = sorted(
        ((e.device_time_total / RUNS / BATCH, e.count // RUNS, e.key[:100]) for e in prof.key_averages()),
        reverse=True,
    )
    total = sum(r[0] for r in rows)
    print(json.dumps({"graph": name, "gpu_us_per_image": round(total, 2),
                      "kernels": [[round(us, 2), n, k] for us, n, k in rows[:12]]}))
