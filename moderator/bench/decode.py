"""`moderator bench decode`: image bytes → model-ready uint8 (S, S, 3) pixels, per second.

Three CPU figures for our `decode_image`, per format:
- `1 core`: one process decoding in a loop (what one decode worker can do);
- `all cores`: one process per core, each decoding its own copy of the images in a loop
  (the ceiling of the decode pool);
- `pool`: images submitted one by one to a `ProcessPoolExecutor`, as the service does, so
  the figure includes pickling the bytes in and the pixels out.

On a CUDA machine, two GPU paths for batches of JPEG bytes:
- `gpu (serve)`: what `serve` runs, `GpuJpegDecoder` from `moderator.pipeline.decode.gpu`
  (nvImageCodec on the hardware JPEG engines, then one ONNX Runtime resize-and-crop call per
  batch), with its pixels compared against the CPU path's;
- `gpu (torchvision|torchcodec)`: nvJPEG through torch, resized and centre-cropped by torch
  (`moderator.bench.decode_torch`), the peer a torch user would write.
PNG has no GPU decoder, so it is CPU-only.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Final

import numpy as np

from moderator.bench.decode_torch import torch_problem, torch_rate
from moderator.bench.images import BenchImage, bench_images
from moderator.bench.report import Column, Report
from moderator.errors import ConfigError
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image

__all__ = ["run_decode_bench"]

FORMATS: Final = ("JPEG", "PNG")
GPU_BATCH: Final = 128  # JPEGs per nvJPEG call: large enough to fill the decoder's batch

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- CPU -------------------------------------------------------------------------------------

_BARRIER_TIMEOUT_S: Final = 120.0  # workers start within seconds; this only stops a hang
_worker_images: list[bytes] = []
_worker_state: dict[str, Any] = {}


def _init_worker(images: list[bytes], spec: PreprocessSpec, barrier: Any) -> None:
    _worker_images[:] = images
    _worker_state.update(spec=spec, barrier=barrier)


def _decode_loop(seconds: float) -> tuple[int, float]:
    """In a worker: decode the worker's images round-robin for `seconds`; (count, elapsed).

    The barrier holds every task until all workers have one, so each runs in its own
    process and all run at the same time.
    """
    _worker_state["barrier"].wait(_BARRIER_TIMEOUT_S)
    return _loop(_worker_images, _worker_state["spec"], seconds)


def _loop(images: Sequence[bytes], spec: PreprocessSpec, seconds: float) -> tuple[int, float]:
    count = 0
    started = time.perf_counter()
    while True:
        decode_image(images[count % len(images)], spec)
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and count >= len(images):
            return count, elapsed


def _context() -> Any:
    # forkserver, as the service's pool: workers never inherit this process's threads.
    return multiprocessing.get_context("forkserver")


def _barrier_pool(images: list[bytes], spec: PreprocessSpec, workers: int) -> ProcessPoolExecutor:
    """`workers` processes holding `images` and `spec`, with one start barrier for them all."""
    context = _context()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(images, spec, context.Barrier(workers)),
    )


def _all_cores(images: list[bytes], spec: PreprocessSpec, seconds: float, workers: int) -> float:
    with _barrier_pool(images, spec, workers) as pool:
        list(pool.map(_decode_loop, [0.0] * workers))  # start every worker, warm its caches
        results = list(pool.map(_decode_loop, [seconds] * workers))
    # Every worker ran for `seconds` at the same time: the rates add up.
    return sum(count / elapsed for count, elapsed in results)


def _pool_submit(images: list[bytes], spec: PreprocessSpec, seconds: float, workers: int) -> float:
    """Images sent one at a time, as `serve` does, with up to 4 per worker queued."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        list(pool.map(decode_image, images[:workers], [spec] * workers))  # start the workers
        in_flight = 4 * workers
        done = 0
        started = time.perf_counter()
        pending = [
            pool.submit(decode_image, images[i % len(images)], spec) for i in range(in_flight)
        ]
        submitted = in_flight
        while time.perf_counter() - started < seconds or done < len(images):
            pending.pop(0).result()
            done += 1
            pending.append(pool.submit(decode_image, images[submitted % len(images)], spec))
            submitted += 1
        elapsed = time.perf_counter() - started
        for future in pending:
            future.cancel()
    return done / elapsed


# --- GPU -------------------------------------------------------------------------------------


def _batches(jpegs: list[bytes], batch: int) -> list[list[bytes]]:
    """Full batches of `batch` covering every image at least once (wrapping around)."""
    return [
        [jpegs[(start + k) % len(jpegs)] for k in range(batch)]
        for start in range(0, max(len(jpegs), batch), batch)
    ]


def _serve_gpu_rate(
    jpegs: list[bytes], spec: PreprocessSpec, seconds: float, batch: int
) -> tuple[float, float, dict[str, float]]:
    """`serve`'s GPU decoder over batches of `batch`: (img/s with its two stages in two
    threads as `serve` runs them, img/s in one thread, pixel difference vs the CPU path)."""
    from moderator.pipeline.decode.gpu import GpuJpegDecoder

    decoder = GpuJpegDecoder(spec, device_id=0, max_batch=batch)
    try:
        batches = _batches(jpegs, batch)
        first = decoder.fill(batches[0])  # nvImageCodec and cuDNN set-up happen here
        if first.failures:
            raise RuntimeError(f"GPU decoder refused bench images: {first.failures}")
        got = decoder.to_host(first)[:8].astype(np.int16)
        want = np.stack([decode_image(b, spec) for b in batches[0][:8]]).astype(np.int16)
        diff = np.abs(got - want)
        parity = {"mean_abs": float(diff.mean()), "max_abs": float(diff.max())}
        two_stages = _two_stage_rate(decoder, batches, seconds)
        done = 0
        started = time.perf_counter()
        while True:
            for chunk in batches:
                decoder.fill(chunk)  # returns once the batch is on the device
                done += len(chunk)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return two_stages, done / elapsed, parity
    finally:
        decoder.close()


def _two_stage_rate(decoder: Any, batches: list[list[bytes]], seconds: float) -> float:
    """img/s with batch k+1 decoding in a second thread while batch k is placed, as the
    service's batcher runs a GPU decoder."""
    from concurrent.futures import ThreadPoolExecutor

    done = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-decode") as pool:
        ahead = pool.submit(decoder.decode, batches[0])
        while True:
            for k in range(len(batches)):
                decoded = ahead.result()
                ahead = pool.submit(decoder.decode, batches[(k + 1) % len(batches)])
                decoder.place(decoded)  # batch k on the SMs while k+1 decodes
                done += len(decoded.items)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                ahead.result()
                return done / elapsed


def _serve_gpu_worker(seconds: float, batch: int) -> float:
    """In a worker process: `serve`'s GPU decoder, two stages, for `seconds`; img/s.

    The decoder is made on the first call (seconds 0, which only waits at the barrier) and
    kept: the timed call then starts in every process at once.
    """
    decoder = _worker_state.get("decoder")
    barrier = _worker_state["barrier"]
    if decoder is None:
        try:
            if problem := _serve_gpu_problem():  # also loads the CUDA libraries ORT needs
                raise RuntimeError(problem)
            from moderator.pipeline.decode.gpu import GpuJpegDecoder

            decoder = GpuJpegDecoder(_worker_state["spec"], device_id=0, max_batch=batch)
            _worker_state.update(decoder=decoder, batches=_batches(_worker_images, batch))
            decoder.fill(_worker_state["batches"][0])
        except Exception:
            barrier.abort()  # the others stop waiting for this process
            raise
    barrier.wait(_BARRIER_TIMEOUT_S)
    if seconds <= 0:
        return 0.0
    return _two_stage_rate(decoder, _worker_state["batches"], seconds)


def _serve_gpu_processes_rate(
    jpegs: list[bytes], spec: PreprocessSpec, seconds: float, batch: int, processes: int
) -> float:
    """`serve`'s GPU path in `processes` processes on GPU 0 at once (as replicas sharing a
    GPU run it): the sum of their img/s."""
    with _barrier_pool(jpegs, spec, processes) as pool:
        _all_or_cause(pool, 0.0, batch, processes)  # a decoder in each process
        # Each process stops after its own last full pass, so the sum counts a little time
        # with fewer processes running: a slight overestimate, under one pass per process.
        return sum(_all_or_cause(pool, seconds, batch, processes))


def _all_or_cause(
    pool: ProcessPoolExecutor, seconds: float, batch: int, processes: int
) -> list[float]:
    """Every worker's rate; if any failed, the first failure that is not another worker's
    broken barrier (the one that aborted it says why)."""
    futures = [pool.submit(_serve_gpu_worker, seconds, batch) for _ in range(processes)]
    errors = [exc for future in futures if (exc := future.exception()) is not None]
    if errors:
        causes = [exc for exc in errors if not isinstance(exc, threading.BrokenBarrierError)]
        raise (causes or errors)[0]
    return [future.result() for future in futures]


def _serve_gpu_problem() -> str | None:
    """Why `serve`'s GPU decoder cannot run here, or None."""
    from moderator.embed.providers import select_providers

    if select_providers(["cuda", "cpu"])[0].name != "cuda":  # "cuda" alone raises without one
        return "GPU decode (serve) skipped: onnxruntime's CUDA provider cannot run here"
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return "GPU decode (serve) skipped: nvImageCodec is not installed (the gpu extra)"
    return None


# --- the bench -------------------------------------------------------------------------------

COLUMNS: Final = [
    Column("path", "path"),
    Column("format", "format"),
    Column("workers", "workers"),
    Column("img_s", "img/s"),
    Column("img_s_per_worker", "img/s per worker"),
]


def run_decode_bench(
    *,
    images: int,
    seconds: float,
    size: int,
    resize_shortest_edge: int | None = None,
    workers: int = 0,
    gpu: bool = True,
    gpu_batch: int = GPU_BATCH,
    gpu_processes: int = 4,
    seed: int = 0,
    progress: Progress = _stderr,
) -> Report:
    """Decode rates of 1024×768 photo-like JPEGs and PNGs at crop size `size`.

    `ratio` is `serve`'s GPU JPEG rate ÷ the all-cores CPU JPEG rate (null without a GPU);
    `ratio_vs_torch` is `serve`'s GPU rate ÷ the torch nvJPEG peer's. With `gpu_processes`
    > 1, a further row runs `serve`'s GPU path in that many processes sharing GPU 0.
    """
    if images < 1:
        raise ConfigError(f"--images must be >= 1, got {images}")
    cores = workers or os.cpu_count() or 1
    spec = PreprocessSpec.for_model(size, resize_shortest_edge or size)
    report = Report("decode", COLUMNS)
    report.config = {
        "images_per_format": images,
        "image_size": "1024x768",
        "crop": size,
        "resize_shortest_edge": spec.resize_shortest_edge,
        "seconds": seconds,
        "workers": cores,
        "gpu_batch": gpu_batch,
        "gpu_processes": gpu_processes,
    }
    progress(f"generating {images} JPEG and {images} PNG photo-like images")
    pool = bench_images(images, seed=seed, png_fraction=0.0)
    by_format: dict[str, list[bytes]] = {"JPEG": [i.data for i in pool]}
    by_format["PNG"] = [_to_png(i) for i in pool]
    report.config["mean_bytes"] = {
        fmt: int(np.mean([len(b) for b in data])) for fmt, data in by_format.items()
    }
    rates: dict[tuple[str, str], float] = {}
    for fmt in FORMATS:
        data = by_format[fmt]
        progress(f"{fmt}: 1 core")
        _loop(data[:1], spec, 0.0)  # imports and first-call costs
        count, elapsed = _loop(data, spec, seconds)
        rates[("cpu-1-core", fmt)] = count / elapsed
        report.rows.append(_row("cpu 1 core", fmt, 1, count / elapsed))
        progress(f"{fmt}: all cores ({cores} processes)")
        rate = _all_cores(data, spec, seconds, cores)
        rates[("cpu-all-cores", fmt)] = rate
        report.rows.append(_row("cpu all cores", fmt, cores, rate))
        progress(f"{fmt}: pool submit ({cores} processes)")
        rate = _pool_submit(data, spec, seconds, cores)
        report.rows.append(_row("cpu pool submit", fmt, cores, rate))
    serve_rate = shared_rate = None
    problem = _serve_gpu_problem() if gpu else "GPU decode skipped: --no-gpu"
    if problem is None:
        progress(f"JPEG: GPU as serve runs it, batches of {gpu_batch}")
        try:
            serve_rate, one_thread, parity = _serve_gpu_rate(
                by_format["JPEG"], spec, seconds, gpu_batch
            )
        except Exception as exc:  # driver/codec problems: report them, keep the other figures
            report.notes.append(f"GPU decode (serve) failed: {type(exc).__name__}: {exc}")
        else:
            report.rows.append(_row("gpu (serve: nvimgcodec + ort)", "JPEG", 1, serve_rate))
            report.rows.append(_row("gpu (serve, stages in 1 thread)", "JPEG", 1, one_thread))
            report.config["serve_gpu_vs_cpu_pixels"] = parity
            if gpu_processes > 1:
                progress(f"JPEG: GPU as serve runs it, {gpu_processes} processes on GPU 0")
                try:
                    shared_rate = _serve_gpu_processes_rate(
                        by_format["JPEG"], spec, seconds, gpu_batch, gpu_processes
                    )
                except Exception as exc:  # as above: a note, the other figures stand
                    report.notes.append(
                        f"GPU decode (serve, {gpu_processes} processes) failed: "
                        f"{type(exc).__name__}: {exc}"
                    )
                else:
                    report.rows.append(
                        _row("gpu (serve, processes)", "JPEG", gpu_processes, shared_rate)
                    )
            report.notes.append(
                "gpu (serve): pixels differ from the CPU path's by "
                f"{parity['mean_abs']:.2f} levels on average (max {parity['max_abs']:.0f}): "
                "GPU IDCT at full size, box and linear reduction vs the CPU path's DCT draft"
            )
    else:
        report.notes.append(problem)
    gpu_rate = None
    problem = torch_problem() if gpu else None
    if problem is None:
        progress(f"JPEG: GPU, batches of {gpu_batch}")
        try:
            gpu_rate, decoder = torch_rate(
                _batches(by_format["JPEG"], gpu_batch), spec, seconds, "cuda"
            )
        except Exception as exc:  # nvJPEG/driver problems: report them, keep the CPU figures
            report.notes.append(f"GPU decode failed: {type(exc).__name__}: {exc}")
        else:
            report.rows.append(_row(f"gpu ({decoder})", "JPEG", 1, gpu_rate))
            report.config["gpu_decoder"] = decoder
            report.notes.append(
                "gpu: host JPEG bytes in, (n, S, S, 3) uint8 pixels left on the device"
            )
    elif problem is not None:
        report.notes.append(problem)
    report.notes.append(
        "all cores: each process decodes its own copy of the images (no IPC); pool submit: "
        "one image per task through a ProcessPoolExecutor, as the service sends them"
    )
    cpu_all = rates[("cpu-all-cores", "JPEG")]
    report.results = {
        "ratio": serve_rate / cpu_all if serve_rate is not None else None,
        "peer": "cpu-all-cores JPEG",
        "ratio_vs_torch": serve_rate / gpu_rate if serve_rate and gpu_rate else None,
        "jpeg_img_s": {"cpu_1_core": rates[("cpu-1-core", "JPEG")], "cpu_all_cores": cpu_all}
        | ({"gpu_serve": serve_rate} if serve_rate is not None else {})
        | ({"gpu_serve_processes": shared_rate} if shared_rate is not None else {})
        | ({"gpu": gpu_rate} if gpu_rate is not None else {}),
        "png_img_s": {
            "cpu_1_core": rates[("cpu-1-core", "PNG")],
            "cpu_all_cores": rates[("cpu-all-cores", "PNG")],
        },
    }
    report.finish()
    return report


def _row(path: str, fmt: str, workers: int, rate: float) -> dict[str, Any]:
    return {
        "path": path,
        "format": fmt,
        "workers": workers,
        "img_s": rate,
        "img_s_per_worker": rate / workers,
    }


def _to_png(image: BenchImage) -> bytes:
    """The same picture as PNG, so the two formats differ only in the codec."""
    import io

    from PIL import Image

    from moderator.bench.images import encode

    with Image.open(io.BytesIO(image.data)) as im:
        return encode(im.convert("RGB"), "PNG")
