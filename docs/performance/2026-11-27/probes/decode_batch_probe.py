"""Probe (fourth lease): nvImageCodec decode time per call by batch size, one process, then
the same with 4 and 8 processes at once (as `serve` replicas share a GPU). The decoder is
set up as `GpuJpegDecoder` sets it up (hardware engines first, 2 CPU threads). 1024×768
photo-like JPEGs. Writes $OUT/decode-batch.json."""
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.getcwd())
SECONDS = 1.5


def decoder():
    from nvidia import nvimgcodec

    k = nvimgcodec.BackendKind
    return nvimgcodec.Decoder(
        device_id=0,
        max_num_cpu_threads=2,
        backends=[nvimgcodec.Backend(k.HW_GPU_ONLY), nvimgcodec.Backend(k.GPU_ONLY), nvimgcodec.Backend(k.HYBRID_CPU_GPU)],
    )


def timed(batch, jpegs, start=None):
    import torch

    dec = decoder()
    chunk = [jpegs[i % len(jpegs)] for i in range(batch)]
    for _ in range(3):
        dec.decode(chunk)
    torch.cuda.synchronize()
    if start is not None:
        start.wait()
    calls, t = 0, time.perf_counter()
    while time.perf_counter() - t < SECONDS:
        dec.decode(chunk)
        torch.cuda.synchronize()
        calls += 1
    elapsed = time.perf_counter() - t
    return {"ms_per_call": round(1000 * elapsed / calls, 2), "img_s": round(calls * batch / elapsed)}


def worker(batch, jpegs, start, queue):
    queue.put(timed(batch, jpegs, start))


if __name__ == "__main__":
    from moderator.bench.images import bench_images

    jpegs = [b.data for b in bench_images(64, png_fraction=0.0, seed=3)]
    res = {}
    for batch in (1, 4, 16, 64, 128):
        res[f"1 process, batch {batch}"] = timed(batch, jpegs)
        print(batch, res[f"1 process, batch {batch}"], flush=True)
    ctx = mp.get_context("spawn")
    for procs in (4, 8):
        for batch in (16, 128):
            start, queue = ctx.Barrier(procs), ctx.Queue()
            ps = [ctx.Process(target=worker, args=(batch, jpegs, start, queue)) for _ in range(procs)]
            [p.start() for p in ps]
            got = [queue.get(timeout=120) for _ in ps]
            [p.join() for p in ps]
            key = f"{procs} processes, batch {batch}"
            res[key] = {"ms_per_call_each": [g["ms_per_call"] for g in got], "img_s_total": sum(g["img_s"] for g in got)}
            print(key, res[key], flush=True)
    out = os.environ.get("OUT", "/tmp/out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "decode-batch.json"), "w") as f:
        json.dump(res, f, indent=1)
