"""The model on each configured device, and a GPU JPEG decoder beside each one where asked.

More than one runtime only pays when each has its own GPU, so a model on the CPU gets one.
GPU decoding follows `pipeline.gpu_decode`: "auto" goes on without decoders (JPEGs decode on
the CPU) and says why, at INFO, or at WARNING if a decoder started and then failed (that
points at the GPU); "on" refuses to start without them; "off" never builds one.
"""

from __future__ import annotations

import asyncio
import time

from moderator.embed import ClipRuntime, load_model
from moderator.errors import ConfigError, ModeratorError
from moderator.log import get
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.gpu import GpuJpegDecoder
from moderator.settings import Settings

log = get("service")


async def load_runtimes(settings: Settings) -> list[ClipRuntime]:
    """One runtime per `model.device_ids` entry on GPUs, one on the CPU; loaded off the loop."""
    s = settings.model
    runtimes: list[ClipRuntime] = []
    for index, device in enumerate(s.device_ids):
        runtime = await asyncio.to_thread(
            load_model,
            s.path,
            providers=s.providers,
            device_id=device,
            intra_op_threads=s.intra_op_threads,
            verify=s.verify_hashes and index == 0,  # one check per model directory
            max_batch=settings.pipeline.max_batch,
            attention=s.attention_kernel,
            cuda_graphs=s.cuda_graphs,
        )
        runtimes.append(runtime)
        if runtime.provider == "cpu":
            break
    return runtimes


def open_gpu_decoders(
    mode: str, runtimes: list[ClipRuntime], spec: PreprocessSpec, max_batch: int
) -> list[GpuJpegDecoder]:
    """One decoder per runtime, built and warmed up (`GpuJpegDecoder.warm_up`), or none as
    `mode` (`pipeline.gpu_decode`) allows. Blocks about a second: run it off the loop."""
    if mode == "off":
        return []
    started = time.monotonic()
    decoders: list[GpuJpegDecoder] = []
    try:
        if any(rt.provider == "cpu" for rt in runtimes):
            raise ConfigError("the model runs on the CPU")
        for runtime in runtimes:
            decoder = GpuJpegDecoder(
                spec, device_id=int(runtime.info()["device_id"]), max_batch=max_batch
            )
            decoders.append(decoder)
            decoder.warm_up(runtime.encode_device_pixels)
    except ModeratorError as exc:
        started_one = bool(decoders)  # then it failed on the GPU, not before
        for decoder in decoders:
            decoder.close()
        if mode == "on":
            raise ConfigError(f"pipeline.gpu_decode is on, but: {exc}") from exc
        report = log.warning if started_one else log.info
        report("JPEGs decode on the CPU", extra={"fields": {"why": str(exc)}})
        return []
    except BaseException:  # anything else stops the start-up: nothing is left open
        for decoder in decoders:
            decoder.close()
        raise
    fields = {"gpus": len(decoders), "ready_s": round(time.monotonic() - started, 2)}
    log.info("JPEGs decode on the GPU", extra={"fields": fields})
    return decoders
