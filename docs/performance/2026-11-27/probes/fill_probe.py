"""Probe: where `GpuJpegDecoder.fill` spends its time (decode vs resize), batches of 128.

Ran at commit 7c76182, when the decoder had one stream (`_stream`) and one lock.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import onnxruntime as ort  # noqa: E402

ort.preload_dlls()
from moderator.bench.images import bench_images  # noqa: E402
from moderator.pipeline.decode.cpu import PreprocessSpec  # noqa: E402
from moderator.pipeline.decode.gpu import GpuJpegDecoder  # noqa: E402

RES = {}
spec = PreprocessSpec.for_model(224, 224)
jpegs = [b.data for b in bench_images(256, png_fraction=0.0, seed=3)]
chunks = [jpegs[:128], jpegs[128:]]


def rate(fn, seconds=2.0):
    fn(chunks[0])
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for c in chunks:
            fn(c)
            n += len(c)
    return round(n / (time.perf_counter() - t))


for label, options in [("default", None), ("hw_only", "hw")]:
    dec = GpuJpegDecoder(spec, max_batch=128)
    if options == "hw":
        from nvidia import nvimgcodec

        dec._decoder = nvimgcodec.Decoder(
            device_id=0, backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)]
        )

    def decode_only(c, dec=dec):
        images = dec._decoder.decode(c, cuda_stream=dec._stream)
        dec._cuda.synchronize(dec._stream)
        return images

    decoded = decode_only(chunks[0])

    def resize_only(c, dec=dec, decoded=decoded):
        dec._resize(decoded, dec._buffer.data_ptr())

    RES[f"{label}_decode_only"] = rate(decode_only)
    RES[f"{label}_resize_only"] = rate(resize_only)
    RES[f"{label}_fill"] = rate(dec.fill)
    print(label, {k: v for k, v in RES.items() if k.startswith(label)}, flush=True)
    dec.close()
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
with open(os.path.join(os.environ.get("OUT", "/tmp/out"), "fill-probe.json"), "w") as f:
    json.dump(RES, f, indent=1)
