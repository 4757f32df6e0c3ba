"""`run_e2e_bench`: the phases in order (see the package doc), on fresh topics, then the report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from functools import partial
from pathlib import Path

import numpy as np

from moderator.bench.e2e.answers import Collector
from moderator.bench.e2e.load import Pool, run_producers
from moderator.bench.e2e.measures import batch_mean, scrape, stage_medians
from moderator.bench.e2e.options import (
    MAX_RECORD_BYTES,
    E2EOptions,
    Progress,
    default_events,
    default_policy,
    stderr,
)
from moderator.bench.e2e.phases import Phase, half_phase, max_phase
from moderator.bench.e2e.summary import COLUMNS, summarize
from moderator.bench.e2e.systems import START_PEER, start_ours
from moderator.bench.e2e.usage import Watch, broker_pids, core_list, pin, split_cores
from moderator.bench.images import bench_images
from moderator.bench.model import resolve_bench_model
from moderator.bench.report import Report
from moderator.errors import ConfigError
from moderator.harness.imageserver import ImageServerProcess
from moderator.harness.topics import Topics
from moderator.settings import KafkaSettings


async def run_e2e_bench(opts: E2EOptions, progress: Progress = stderr) -> Report:
    """Run the phases (see the package doc) and report; `ratio` = ours ÷ naive at max load."""
    events = opts.events or default_events(opts.model)
    if events < 1 or opts.unique < 1 or opts.duration <= 0:
        raise ConfigError("--events and --unique must be >= 1 and --duration > 0")
    precision = opts.precision
    if precision == "auto":
        from moderator.bench.model import auto_precision

        precision = auto_precision(opts.providers)
    bench_model = resolve_bench_model(
        opts.model,
        precision=precision,
        peer_model=opts.peer_model,
        progress=progress,
        peer=bool(opts.peers),
    )
    policy = opts.policy or default_policy(opts.model)
    report = Report("e2e", COLUMNS)
    report.config = {
        "model": opts.model,
        "onnx_dir": str(bench_model.onnx_dir),
        "peer_checkpoint": str(bench_model.hf_dir) if bench_model.hf_dir else None,
        "policy": str(policy),
        "events": events,
        "unique_images": opts.unique,
        "png_fraction": opts.png_fraction,
        "url_fraction": opts.url_fraction,
        "partitions": opts.partitions,
        "producers": opts.producers,
        "half_load_seconds": opts.duration,
        "peer": ",".join(opts.peers) or None,
        "peer_batch": opts.peer_batch,
        "peer_threads": opts.peer_threads or None,
        "broker": opts.broker,
        "redis": False,
        "service_env": opts.service_env,
        "replicas": opts.replicas,
        "replica_devices": list(opts.replica_devices) or None,
        "precision": precision,
        "encoding": opts.encoding,
    }
    watch = _watch(opts, report)
    peer_dir = bench_model.hf_dir if opts.peers else None
    if opts.peers and peer_dir is None:
        why = f"; {bench_model.note}" if bench_model.note else ""
        report.notes.append(
            f"naive peer skipped: no PyTorch checkpoint for {opts.model!r} "
            f"(pass --peer-model DIR){why}"
        )
    progress(f"generating {opts.unique} photo-like 1024x768 images")
    images = bench_images(opts.unique, seed=opts.seed, png_fraction=opts.png_fraction)
    report.config["image_bytes_mean"] = int(np.mean([len(i.data) for i in images]))
    names = [f"{i}.{'jpg' if image.format == 'JPEG' else 'png'}" for i, image in enumerate(images)]
    settings = KafkaSettings(bootstrap_servers=opts.broker)
    topics = Topics(settings, f"moderator-bench-{uuid.uuid4().hex[:8]}-")
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="moderator-bench-") as tmp:
        folder = Path(tmp)
        server = None
        if opts.url_fraction > 0:
            (folder / "images").mkdir()
            served = {name: image.data for name, image in zip(names, images, strict=True)}
            server = ImageServerProcess(served, folder / "images")
        urls = [server.url(name).encode() for name in names] if server else []
        types = [f"image/{image.format.lower()}" for image in images]
        pool = Pool([i.data for i in images], types, urls, opts.url_fraction, opts.encoding)
        try:
            phases = await _phases(
                opts,
                events,
                bench_model.onnx_dir,
                peer_dir,
                policy,
                pool,
                topics,
                folder,
                report,
                progress,
                watch,
            )
        finally:
            if server is not None:
                server.stop()
            if not opts.keep_topics:
                with contextlib.suppress(Exception):
                    await topics.delete()
    summarize(report, phases, opts)
    report.finish()
    return report


def _watch(opts: E2EOptions, report: Report) -> Watch:
    """What the phases watch; with `--cores-broker`/`--cores-load`, the broker and this
    process (the collector, and the load generator's processes it spawns) are pinned now,
    and the system under test on the rest once ready. The split goes in the report."""
    try:
        split = split_cores(opts.cores_broker, opts.cores_load)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    broker = broker_pids(opts.broker)
    report.config["broker_pids_watched"] = len(broker)
    gpus = list(opts.replica_devices) or ([0] if "cuda" in opts.providers and _has_gpu() else [])
    if split is None:
        report.config["cores"] = {"all": core_list(os.sched_getaffinity(0))}
        return Watch(broker, None, gpus)
    if split["broker"]:
        if not broker:
            raise ConfigError(f"--cores-broker: no local process listens at {opts.broker}")
        pin(broker, split["broker"])
    if split["load"]:
        os.sched_setaffinity(0, split["load"])
    report.config["cores"] = {name: core_list(cores) for name, cores in split.items()}
    opts.service_cores = frozenset(split["service"])
    return Watch(broker, split["service"], gpus)


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


async def _topic_group(topics: Topics, label: str, partitions: int) -> dict[str, str]:
    """A phase's input, verdict and DLQ topics; input and DLQ take records over 1 MB."""
    return {
        "input": await topics.make(
            f"{label}-in", partitions=partitions, max_message_bytes=MAX_RECORD_BYTES
        ),
        "verdicts": await topics.make(f"{label}-verdicts", partitions=partitions),
        "dlq": await topics.make(
            f"{label}-dlq", partitions=partitions, max_message_bytes=MAX_RECORD_BYTES
        ),
    }


async def _phases(
    opts: E2EOptions,
    events: int,
    onnx_dir: Path,
    peer_dir: Path | None,
    policy: Path,
    pool: Pool,
    topics: Topics,
    folder: Path,
    report: Report,
    progress: Progress,
    watch: Watch,
) -> list[Phase]:
    phases: list[Phase] = []
    shared = await _topic_group(topics, "max", opts.partitions)
    progress(f"preloading {events} events into {shared['input']}")
    preload = await asyncio.to_thread(
        run_producers,
        opts.broker,
        shared["input"],
        pool,
        "max",
        workers=opts.producers,
        count=events,
    )
    report.config["preload_seconds"] = round(preload.seconds, 2)

    # 1. ours at max load
    collector = Collector(opts.broker, shared["verdicts"], shared["dlq"], parse=True)
    try:
        phase, system = await max_phase(
            "ours",
            lambda: start_ours(
                opts,
                onnx_dir,
                policy,
                shared,
                f"bench-ours-{uuid.uuid4().hex[:6]}",
                folder / "ours-max",
            ),
            collector,
            events,
            opts.timeout,
            progress,
            watch,
        )
        metrics = await scrape(system.urls("/metrics"))
        await system.stop()
    finally:
        await collector.stop()
    phase.extra |= {
        "mean_batch": batch_mean(metrics),
        "stage_p50_ms": stage_medians(collector.timings),
        "decisions": collector.decisions,
    }
    phases.append(phase)
    progress(f"ours: {phase.rate:.1f} verdicts/s")

    # 2. the peers at max load, same events
    for peer in opts.peers:
        if peer_dir is None:
            break
        verdicts = await topics.make(f"{peer}-verdicts", partitions=opts.partitions)
        peer_topics = shared | {"verdicts": verdicts}
        collector = Collector(opts.broker, peer_topics["verdicts"], None, parse=True)
        try:
            phase, system = await max_phase(
                peer,
                partial(
                    START_PEER[peer],
                    opts,
                    peer_dir,
                    policy,
                    peer_topics,
                    f"bench-{peer}-{uuid.uuid4().hex[:6]}",
                    folder / f"{peer}-max",
                ),
                collector,
                events,
                opts.timeout,
                progress,
                watch,
            )
            await system.stop()
        finally:
            await collector.stop()
        phase.extra |= {"decisions": collector.decisions}
        phases.append(phase)
        progress(f"{peer}: {phase.rate:.1f} verdicts/s")

    # 3. half load: latency
    for p in list(phases):
        if p.load != "max" or (p.system != "ours" and not opts.peer_latency):
            continue
        half = await _topic_group(topics, f"half-{p.system}", opts.partitions)
        # Ours' verdicts are parsed for their stage timings (`slow_event_stages`).
        collector = Collector(opts.broker, half["verdicts"], half["dlq"], parse=p.system == "ours")
        group = f"bench-{p.system}-half-{uuid.uuid4().hex[:6]}"
        logs = folder / f"{p.system}-half"
        if p.system == "ours":
            start = partial(start_ours, opts, onnx_dir, policy, half, group, logs)
        else:
            assert peer_dir is not None
            start = partial(START_PEER[p.system], opts, peer_dir, policy, half, group, logs)

        try:
            phases.append(
                await half_phase(
                    p.system,
                    start,
                    collector,
                    opts,
                    pool,
                    half["input"],
                    p.rate / 2,
                    progress,
                    watch,
                )
            )
        finally:
            await collector.stop()
    return phases
