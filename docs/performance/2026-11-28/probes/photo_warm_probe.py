"""Probe (eighth lease): what a GPU decoder's first photo-size batches cost after its warm-up.

With GPU decoding, a fresh replica's first two seconds of events still held batches of up to
2.5 s after `serve` began warming its decoders (h100x2-8-e2e-r4-d0-gpudecode-on-warm.json).
`GpuJpegDecoder.warm_up` decodes small grey JPEGs; this asks whether the first batches at
photo sizes are what is slow, and whether warming at a photo size takes that away.

MODE=small: the warm-up as `serve` runs it. MODE=photo: then also one full batch of grey
1920×1080 JPEGs through both stages (`fill`). Then `fill` on the bench's 1024×768 photo JPEGs,
batch sizes 64, 64, 13, 13, 40, 40, 5, 5; prints one JSON line of ms per call.
Run each mode in a fresh process.
"""

import io
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

from PIL import Image  # noqa: E402

from moderator.bench.decode import _serve_gpu_problem  # noqa: E402
from moderator.bench.images import bench_images  # noqa: E402
from moderator.pipeline.decode.cpu import PreprocessSpec  # noqa: E402
from moderator.pipeline.decode.gpu import GpuJpegDecoder  # noqa: E402

if problem := _serve_gpu_problem():
    raise SystemExit(problem)
mode = os.environ.get("MODE", "small")
result: dict[str, object] = {"mode": mode}
t = time.perf_counter()
decoder = GpuJpegDecoder(PreprocessSpec.for_model(224, 224), device_id=0, max_batch=64)
decoder.warm_up()
result["build_and_warm_up_s"] = round(time.perf_counter() - t, 3)
if mode == "photo":
    buffer = io.BytesIO()
    Image.new("RGB", (1920, 1080), (128, 128, 128)).save(buffer, "JPEG")
    t = time.perf_counter()
    decoder.fill([buffer.getvalue()] * 64)
    result["photo_warm_up_s"] = round(time.perf_counter() - t, 3)
jpegs = [image.data for image in bench_images(64, png_fraction=0.0, seed=7)]
calls = []
for count in (64, 64, 13, 13, 40, 40, 5, 5):
    t = time.perf_counter()
    batch = decoder.fill(jpegs[:count])
    calls.append([count, round(1000 * (time.perf_counter() - t), 1)])
    assert batch.count == count, (batch.count, batch.failures)
result["fill_ms"] = calls
print(json.dumps(result))
