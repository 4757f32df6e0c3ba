"""Probe (sixth lease): what a GPU decoder's first runs cost, per stage and per thread.

As run (commit e01eb3b) the decoder had `warm_up_decode` and `warm_up_place`; both are now
the one `GpuJpegDecoder.warm_up`, so this runs against that commit only.

Builds `GpuJpegDecoder` (max_batch 64, every resize session created, none run), then times
its warm-up calls in one thread, again in that thread, then in another thread. If the first
pass costs seconds and the second milliseconds, the half-load tail with GPU decoding was
first runs landing on events; the third says whether a new thread pays again. Prints one JSON line.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
import time

sys.path.insert(0, os.getcwd())

from moderator.bench.decode import _serve_gpu_problem  # noqa: E402
from moderator.pipeline.decode.cpu import PreprocessSpec  # noqa: E402
from moderator.pipeline.decode.gpu import GpuJpegDecoder  # noqa: E402

if problem := _serve_gpu_problem():
    raise SystemExit(problem)
t = time.perf_counter()
decoder = GpuJpegDecoder(PreprocessSpec.for_model(224, 224), device_id=0, max_batch=64)
result = {"build_s": round(time.perf_counter() - t, 3)}


def timed(name, fn):
    t = time.perf_counter()
    fn()
    result[name] = round(time.perf_counter() - t, 3)


with ThreadPoolExecutor(max_workers=1) as one:  # one thread, as a batch worker's stage
    for rnd in ("first", "again"):
        one.submit(timed, f"decode_{rnd}_s", decoder.warm_up_decode).result()
        one.submit(timed, f"place_{rnd}_s", decoder.warm_up_place).result()
timed("decode_other_thread_s", decoder.warm_up_decode)
timed("place_other_thread_s", decoder.warm_up_place)
print(json.dumps(result))
