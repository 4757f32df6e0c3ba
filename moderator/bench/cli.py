"""`moderator bench model|decode|e2e`: each prints a table (or, with --json, one JSON object)
and writes the JSON report to `--out` (default `.run/bench/<bench>-<time>.json`).

Benchmarks print figures; they are never timed tests. Heavy imports (onnxruntime, torch,
aiokafka) happen inside the commands.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from moderator.errors import ConfigError
from moderator.exits import REPORTED, fail
from moderator.types import DEFAULT_ATTENTION

app = typer.Typer(
    help="Benchmarks that print figures (never timed tests).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object, no table.")]
OutOption = Annotated[
    Path | None, typer.Option(help="Where to write the JSON report (default .run/bench/).")
]


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"{name} must be comma-separated integers, got {text!r}") from exc
    if not values:
        raise ConfigError(f"{name} is empty")
    return values


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip() and part.strip() != "none"]


@app.command()
def model(
    model: Annotated[str, typer.Option(help="demo, b32 (random ViT-B/32) or a model dir.")] = (
        "demo"
    ),
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,32,256",
    precision: Annotated[
        str, typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp16, fp32 or int8; b32 only.")
    ] = "auto",
    providers: Annotated[str, typer.Option(help="ONNX Runtime providers, in order.")] = (
        "cuda,cpu"
    ),
    peers: Annotated[str, typer.Option(help="eager, compile, both, or none.")] = ("eager,compile"),
    seconds: Annotated[float, typer.Option(help="Timed seconds per batch size and system.")] = 5.0,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 3,
    threads: Annotated[
        int, typer.Option(help="CPU threads for ONNX Runtime and torch alike (0 = defaults).")
    ] = 0,
    peer_model: Annotated[
        Path | None,
        typer.Option(
            help="PyTorch checkpoint of the peer (default: the one the model was exported from, "
            "if here; for demo otherwise rebuilt from its shipped ONNX weights into "
            "~/.cache/moderator/demo-hf on first use)."
        ),
    ] = None,
    compile_mode: Annotated[
        str, typer.Option(help="torch.compile mode: default, reduce-overhead, max-autotune.")
    ] = "default",
    pixels: Annotated[
        str,
        typer.Option(
            help="Where the input batch waits: host (both sides copy it up) or device "
            "(already in GPU memory, as after GPU decode)."
        ),
    ] = "host",
    attention: Annotated[
        str,
        typer.Option(help="Our CUDA attention kernel: efficient, flash, cudnn or auto (ORT's)."),
    ] = DEFAULT_ATTENTION,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            help="Ours as a CUDA graph per batch bucket, as serve runs it (model.cuda_graphs)."
        ),
    ] = True,
    as_json: JsonOption = False,
    out: OutOption = None,
) -> None:
    """Image-embedding throughput by batch size: ONNX Runtime (ours) vs PyTorch eager/compile."""
    from moderator.bench.model import run_model_bench

    try:
        if precision not in ("auto", "fp16", "fp32", "int8"):
            raise ConfigError(f"--precision must be auto, fp16, fp32 or int8, got {precision!r}")
        report = run_model_bench(
            model,
            batches=_ints(batch, "--batch"),
            precision=precision,
            providers=_names(providers),
            peers=_names(peers),
            seconds=seconds,
            warmup=warmup,
            peer_model=peer_model,
            threads=threads,
            compile_mode=compile_mode,
            pixels_on=pixels,
            attention=attention,
            cuda_graphs=cuda_graphs,
        )
    except REPORTED as exc:
        raise fail(exc) from exc
    report.emit(as_json=as_json, out=out)


@app.command()
def decode(
    images: Annotated[int, typer.Option(help="Distinct images per format.")] = 16,
    seconds: Annotated[float, typer.Option(help="Timed seconds per case.")] = 3.0,
    size: Annotated[int, typer.Option(help="Crop size S (224 for ViT-B/32, 64 for demo).")] = 224,
    resize: Annotated[int | None, typer.Option(help="Shortest-edge resize (default: S).")] = None,
    workers: Annotated[int, typer.Option(help="Processes for all cores (0 = CPU count).")] = 0,
    gpu: Annotated[bool, typer.Option(help="Also time nvJPEG decode on CUDA if present.")] = True,
    gpu_batch: Annotated[int, typer.Option(help="JPEGs per GPU decode call.")] = 128,
    gpu_processes: Annotated[
        int, typer.Option(help="Also run serve's GPU path in N processes sharing GPU 0 (<2: no).")
    ] = 4,
    as_json: JsonOption = False,
    out: OutOption = None,
) -> None:
    """JPEG/PNG bytes → model-ready pixels: CPU per core, all cores, and the GPU path."""
    from moderator.bench.decode import run_decode_bench

    try:
        report = run_decode_bench(
            images=images,
            seconds=seconds,
            size=size,
            resize_shortest_edge=resize,
            workers=workers,
            gpu=gpu,
            gpu_batch=gpu_batch,
            gpu_processes=gpu_processes,
        )
    except REPORTED as exc:
        raise fail(exc) from exc
    report.emit(as_json=as_json, out=out)


@app.command()
def e2e(
    model: Annotated[str, typer.Option(help="demo, b32 or an exported model dir.")] = "demo",
    events: Annotated[
        int | None, typer.Option(help="Preloaded events (default: 600 demo, 200 b32).")
    ] = None,
    broker: Annotated[str, typer.Option(help="Kafka bootstrap servers.")] = "127.0.0.1:9092",
    peer: Annotated[
        str,
        typer.Option(
            help="The peers to run after ours: naive (one event at a time, HF CLIPProcessor),"
            " strong (batches of 64, nvJPEG through torchvision, torch.compile), naive,strong,"
            " or none."
        ),
    ] = "naive",
    peer_model: Annotated[
        Path | None,
        typer.Option(
            help="The peer's PyTorch checkpoint (default: the one the model was exported from, "
            "if here; for demo otherwise rebuilt from its shipped ONNX weights into "
            "~/.cache/moderator/demo-hf on first use)."
        ),
    ] = None,
    peer_batch: Annotated[int, typer.Option(help="Events per peer step (1 = one at a time).")] = 1,
    peer_threads: Annotated[
        int, typer.Option(help="torch CPU threads of the peer (0 = torch's default).")
    ] = 0,
    peer_latency: Annotated[
        bool, typer.Option(help="Also measure the peer at half of its max load.")
    ] = True,
    duration: Annotated[float, typer.Option(help="Seconds of half-load traffic.")] = 20.0,
    unique: Annotated[int, typer.Option(help="Distinct images, cycled over the events.")] = 32,
    png_fraction: Annotated[float, typer.Option(help="Share of PNG images.")] = 0.2,
    url_fraction: Annotated[
        float, typer.Option(help="Share of events by URL from a local HTTP server.")
    ] = 0.0,
    partitions: Annotated[int, typer.Option(help="Partitions of the bench topics.")] = 6,
    producers: Annotated[int, typer.Option(help="Load-generator processes.")] = 1,
    providers: Annotated[str, typer.Option(help="ONNX Runtime providers, in order.")] = (
        "cuda,cpu"
    ),
    precision: Annotated[str, typer.Option(help="auto, fp16, fp32 or int8 (b32 only).")] = "auto",
    policy: Annotated[
        Path | None, typer.Option(help="Policy (default policies/demo.yaml or default.yaml).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Deadline of a max-load phase, seconds.")] = 600.0,
    service_env: Annotated[
        list[str] | None,
        typer.Option(
            "--service-env",
            help="Extra MODERATOR_X=Y for the service (repeatable); PYTHONPATH=DIR runs the"
            " service from another checkout.",
        ),
    ] = None,
    replicas: Annotated[
        int, typer.Option(help="Service processes in one consumer group (cores shared out).")
    ] = 1,
    replica_devices: Annotated[
        str, typer.Option(help="GPU ids given to the replicas in turn, e.g. 0,1 (default: as set).")
    ] = "",
    keep_topics: Annotated[bool, typer.Option(help="Leave the bench topics behind.")] = False,
    encoding: Annotated[
        str,
        typer.Option(
            help="Inline images as json (base64 in a JSON event) or binary (CloudEvents: the"
            " image as the record value, attributes as ce_* headers)."
        ),
    ] = "json",
    cores_broker: Annotated[
        str | None,
        typer.Option(
            help="Pin the local broker to these cores, e.g. 0-7 (the service gets"
            " the cores neither this nor --cores-load names)."
        ),
    ] = None,
    cores_load: Annotated[
        str | None,
        typer.Option(help="Pin the load generator and the answer collector to these cores."),
    ] = None,
    as_json: JsonOption = False,
    out: OutOption = None,
) -> None:
    """Kafka events → verdicts: throughput at max load and p50/p99 at half load, vs naive.

    Defaults fit a 2-core CPU box; on a GPU box use e.g. --events 50000 --producers 4.
    """
    from moderator.bench.e2e import E2EOptions, run_e2e_bench

    try:
        extra = dict(_pair(item) for item in service_env or [])
        peers = [] if peer == "none" else [name.strip() for name in peer.split(",")]
        if any(name not in ("naive", "strong") for name in peers) or len(set(peers)) < len(peers):
            raise ConfigError(f"--peer takes naive, strong, naive,strong or none, got {peer!r}")
        if replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {replicas}")
        devices = _ints(replica_devices, "--replica-devices") if replica_devices else []
        if precision not in ("auto", "fp16", "fp32", "int8"):
            raise ConfigError(f"--precision must be auto, fp16, fp32 or int8, got {precision!r}")
        if encoding not in ("json", "binary"):
            raise ConfigError(f"--encoding must be json or binary, got {encoding!r}")
        options = E2EOptions(
            model=model,
            events=events,
            broker=broker,
            peers=peers,
            peer_model=peer_model,
            peer_batch=peer_batch,
            peer_threads=peer_threads,
            peer_latency=peer_latency,
            duration=duration,
            unique=unique,
            png_fraction=png_fraction,
            url_fraction=url_fraction,
            partitions=partitions,
            producers=producers,
            providers=_names(providers),
            precision=precision,
            policy=policy,
            timeout=timeout,
            service_env=extra,
            replicas=replicas,
            replica_devices=devices,
            keep_topics=keep_topics,
            encoding=encoding,
            cores_broker=cores_broker,
            cores_load=cores_load,
        )
        report = asyncio.run(run_e2e_bench(options))
    except REPORTED as exc:
        raise fail(exc) from exc
    report.emit(as_json=as_json, out=out)


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    # PYTHONPATH: measure another checkout's service with this bench, in the same run.
    if not sep or not (key.startswith("MODERATOR_") or key == "PYTHONPATH"):
        raise ConfigError(
            f"--service-env takes MODERATOR_NAME=value or PYTHONPATH=..., got {item!r}"
        )
    return key, value
