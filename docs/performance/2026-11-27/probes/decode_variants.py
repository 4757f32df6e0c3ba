"""Probe (fourth lease): `serve`'s GPU decoder with image reuse and the same-size resize graph
turned on and off, stages overlapped as `serve` runs them, batches of 128, one process.

Also times each stage alone with both on. Writes $OUT/decode-variants.json.
Ran when GpuJpegDecoder had an image-reuse pool (`reuse_images`, `_keep_spare`); it gave
nothing measurable and was dropped, so on later commits the reuse switch does nothing.
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.getcwd())
import onnxruntime as ort  # noqa: E402

ort.preload_dlls()
from moderator.bench.images import bench_images  # noqa: E402
from moderator.pipeline.decode.cpu import PreprocessSpec  # noqa: E402
from moderator.pipeline.decode.gpu import GpuJpegDecoder  # noqa: E402

SECONDS = float(os.environ.get("SECONDS_EACH", "3"))
spec = PreprocessSpec.for_model(224, 224)
jpegs = [b.data for b in bench_images(256, png_fraction=0.0, seed=3)]
chunks = [jpegs[:128], jpegs[128:]]
res = {}


def overlapped(dec):
    n = 0
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(dec.decode, chunks[0])
        t = time.perf_counter()
        while time.perf_counter() - t < SECONDS:
            for k in range(2):
                decoded = ahead.result()
                ahead = pool.submit(dec.decode, chunks[(k + 1) % 2])
                dec.place(decoded)
                n += 128
        elapsed = time.perf_counter() - t
        ahead.result()
    return round(n / elapsed)


def alone(fn):
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < SECONDS:
        for c in chunks:
            fn(c)
            n += 128
    return round(n / (time.perf_counter() - t))


dec = GpuJpegDecoder(spec, max_batch=128)
try:
    for _ in range(2):  # each variant twice, interleaved, for the spread
        for reuse in (False, True):
            for same in (False, True):
                dec.reuse_images, dec.same_size_resize = reuse, same
                dec.fill(chunks[0])
                dec.fill(chunks[1])
                key = f"reuse={reuse} same_size={same}"
                res.setdefault(key, []).append(overlapped(dec))
                print(key, res[key], flush=True)
    dec.reuse_images = dec.same_size_resize = True
    res["decode_alone"] = alone(lambda c: dec._keep_spare(dec.decode(c).images))
    kept = dec.decode(chunks[0])
    res["resize_alone_same_size"] = alone(lambda c: dec._resize(kept.images, dec._buffer.data_ptr()))
    dec.same_size_resize = False
    res["resize_alone_mixed"] = alone(lambda c: dec._resize(kept.images, dec._buffer.data_ptr()))
    print(res, flush=True)
finally:
    dec.close()
out = os.environ.get("OUT", "/tmp/out")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "decode-variants.json"), "w") as f:
    json.dump(res, f, indent=1)
