"""Probe (sixth lease): where `serve`'s GPU decode path loses against nvImageCodec alone.

`GpuJpegDecoder` in 1 and then 4 processes on GPU 0 at once, batches of 128 1024×768
photo-like JPEGs, each way for SECONDS:
  two     decode in a second thread while the batch before is placed (as `serve` runs it)
  one     decode, then place, in one thread (no GIL hand-over between a process's threads)
  decode  the decode stage only (nvImageCodec, then the stream sync)
  resize  the place stage only, on one batch decoded once (the resize graph's own rate)
If `decode` and `resize` alone are each well over the rate of `one`, and `one` is about the
rate of running them back to back, the two stages do not overlap on the GPU. Writes
$OUT/decode-modes.json.
"""

import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.getcwd())
SECONDS = 2.5
BATCH = 128
MODES = ("two", "one", "decode", "resize")


def rate(mode, jpegs, start=None):
    from moderator.bench.decode import _batches, _serve_gpu_problem, _two_stage_rate
    from moderator.pipeline.decode.cpu import PreprocessSpec
    from moderator.pipeline.decode.gpu import GpuJpegDecoder

    if problem := _serve_gpu_problem():  # loads the CUDA libraries ORT needs
        raise RuntimeError(problem)
    spec = PreprocessSpec.for_model(224, 224)
    decoder = GpuJpegDecoder(spec, device_id=0, max_batch=BATCH)
    batches = _batches(jpegs, BATCH)
    decoder.fill(batches[0])
    kept = decoder.decode(batches[0]).images
    if start is not None:
        start.wait()
    if mode == "two":
        return _two_stage_rate(decoder, batches, SECONDS)

    def step(chunk):
        if mode == "one":
            decoder.fill(chunk)
        elif mode == "decode":
            decoder.decode(chunk)
        else:
            with decoder._place_lock:
                decoder._on_device()
                decoder._resize(kept, decoder._buffer.data_ptr())
                decoder._cuda.synchronize(decoder._place_stream)

    done, t = 0, time.perf_counter()
    while time.perf_counter() - t < SECONDS:
        for chunk in batches:
            step(chunk)
            done += len(chunk)
    return done / (time.perf_counter() - t)


def worker(mode, jpegs, start, queue):
    try:
        queue.put(rate(mode, jpegs, start))
    except Exception as exc:  # the parent prints it
        start.abort()
        queue.put(repr(exc))


if __name__ == "__main__":
    from moderator.bench.images import bench_images

    jpegs = [b.data for b in bench_images(128, png_fraction=0.0, seed=3)]
    ctx = mp.get_context("spawn")
    res = {}
    for procs in (1, 4):
        for mode in MODES:
            start, queue = ctx.Barrier(procs), ctx.Queue()
            ps = [ctx.Process(target=worker, args=(mode, jpegs, start, queue)) for _ in range(procs)]
            [p.start() for p in ps]
            got = [queue.get(timeout=300) for _ in ps]
            [p.join() for p in ps]
            rates = [g for g in got if isinstance(g, float)]
            key = f"{procs} processes, {mode}"
            res[key] = {"img_s_total": round(sum(rates)), "each": [round(r) for r in rates],
                        "errors": [g for g in got if not isinstance(g, float)]}
            print(key, res[key], flush=True)
    out = os.environ.get("OUT", "/tmp/out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "decode-modes.json"), "w") as f:
        json.dump(res, f, indent=1)
