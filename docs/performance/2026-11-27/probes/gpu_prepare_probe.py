"""Probe (CPU machine): with GPU decoding on, where should an inline JPEG record be parsed?

`serve` without a cache sends each record to a decode process (`prepare_record`), which with
GPU decoding parses, hashes and checks the JPEG, then sends the JPEG bytes back undecoded:
~540 KB of record out and ~400 KB of JPEG back through pipes per event, pickled by the main
process's feeder and result threads. The other way is what `serve` does with a cache: parse
and hash on the loop (`parse_event`, sha256, `gpu_eligible`). The replica's main process is
what bounds a GPU-decoding replica, so this measures its CPU per event (all its threads,
not its children) each way, for the bench's 1024×768 JPEG events, 32 in flight as `serve`
keeps many. Prints one JSON line per way and round.
"""

import asyncio
import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

sys.path.insert(0, os.getcwd())

from moderator.bench.e2e import SURFACE, _Pool  # noqa: E402
from moderator.bench.images import bench_images  # noqa: E402
from moderator.pipeline.decode.cpu import PreprocessSpec  # noqa: E402
from moderator.pipeline.decode.gpu import gpu_eligible  # noqa: E402
from moderator.pipeline.events import parse_event  # noqa: E402
from moderator.pipeline.decode.prepare import prepare_record  # noqa: E402

EVENTS, IN_FLIGHT, MAX_BYTES = 600, 32, 16 << 20
SPEC = PreprocessSpec.for_model(224, 224)


async def run(way: str, records: list[bytes], pool: ProcessPoolExecutor) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(value: bytes) -> None:
        async with slots:
            if way == "worker":
                prepared = await loop.run_in_executor(
                    pool,
                    partial(prepare_record, value, [], max_bytes=MAX_BYTES, spec=SPEC, keep_jpeg=True),
                )
                assert prepared.jpeg is not None
            else:
                event = parse_event(value, [], max_bytes=MAX_BYTES)
                data = event.image_bytes
                hashlib.sha256(data).hexdigest()
                assert gpu_eligible(data, SPEC)
                await asyncio.sleep(0)  # the loop serves others between events

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(v) for v in records))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"way": way, "main_cpu_ms_per_event": round(1000 * cpu / len(records), 3),
            "events_s": round(len(records) / wall, 1)}


async def main() -> None:
    images = bench_images(64, png_fraction=0.0, seed=1)
    import base64

    pool_images = _Pool([base64.b64encode(i.data) for i in images], [], 0.0)
    records = [pool_images.event(i, f"e{i}") for i in range(EVENTS)]
    assert SURFACE
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("forkserver")) as pool:
        await run("worker", records[:64], pool)  # workers up and warm
        for _ in range(2):
            for way in ("worker", "loop"):
                print(json.dumps(await run(way, records, pool)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
