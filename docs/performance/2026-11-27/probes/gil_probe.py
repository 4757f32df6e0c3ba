"""Probe (fifth lease): does a busy Python thread slow `GpuJpegDecoder`'s decode stage?

In `serve` a decode call cost ~2 ms per image against ~0.2 ms alone (fourth lease). Every
call into nvImageCodec leaves and retakes the GIL (per image: the code stream, the image
info, the Image's constructor, three more per `__cuda_array_interface__` read). Retaking it
from a thread that runs Python without blocking waits for a switch interval (5 ms default).
This times `decode` + `place` for batches of 64 1024×768 JPEGs (serve's class, as built) with
nothing else running, with a pure-Python thread spinning beside it, and with that thread and
shorter switch intervals; and, under each, what one extra `__cuda_array_interface__` read per
image costs. Writes $OUT/gil-probe.json.
"""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.getcwd())
SECONDS = 2.0
BATCH = 64


def spin(stop: threading.Event) -> None:
    """Pure Python that never blocks, as a busy event loop between system calls."""
    while not stop.is_set():
        total = 0
        for k in range(2000):
            total += k


def measure(decoder, batch) -> dict:
    calls = 0
    decode_s = place_s = cai_s = 0.0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < SECONDS:
        t = time.perf_counter()
        decoded = decoder.decode(batch)
        t1 = time.perf_counter()
        for image in decoded.images:  # one more read each, as the old `_resize` did twice
            image.image.__cuda_array_interface__
        t2 = time.perf_counter()
        decoder.place(decoded)
        t3 = time.perf_counter()
        decode_s += t1 - t
        cai_s += t2 - t1
        place_s += t3 - t2
        calls += 1
    n = calls * len(batch)
    return {
        "calls": calls,
        "decode_ms_per_img": round(1000 * decode_s / n, 3),
        "extra_cai_read_ms_per_img": round(1000 * cai_s / n, 3),
        "place_ms_per_batch": round(1000 * place_s / calls, 2),
        "img_s_decode_and_place": round(n / (decode_s + place_s)),
    }


def main() -> None:
    from moderator.bench.images import bench_images
    from moderator.pipeline.decode.cpu import PreprocessSpec
    from moderator.pipeline.decode.gpu import GpuJpegDecoder

    jpegs = [b.data for b in bench_images(BATCH, png_fraction=0.0, seed=5)]
    spec = PreprocessSpec(image_size=224, resize_shortest_edge=224)
    decoder = GpuJpegDecoder(spec, device_id=0, max_batch=BATCH)
    decoder.fill(jpegs)
    res = {}
    for name, spinners, interval in (
        ("alone", 0, 0.005),
        ("1 spinning thread", 1, 0.005),
        ("1 spinning thread, switch interval 1 ms", 1, 0.001),
        ("1 spinning thread, switch interval 0.2 ms", 1, 0.0002),
        ("2 spinning threads", 2, 0.005),
        ("alone again", 0, 0.005),
    ):
        sys.setswitchinterval(interval)
        stop = threading.Event()
        threads = [threading.Thread(target=spin, args=(stop,)) for _ in range(spinners)]
        for t in threads:
            t.start()
        res[name] = measure(decoder, jpegs)
        stop.set()
        for t in threads:
            t.join()
        print(name, res[name], flush=True)
    out = os.environ.get("OUT", "/tmp/out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gil-probe.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
