"""`moderator bench model`: image-embedding throughput, our ONNX Runtime path vs PyTorch.

Both sides do the same work per call: uint8 NHWC pixels prepared in host memory go to the
device, are normalized, run through CLIP's vision tower and projection, L2-normalized, and come
back to host memory as float32. So the timings of both include the host→device copy of the
(small, uint8) input and the device→host copy of the embeddings. Ours is
`ClipRuntime.encode_pixels`; the peer is the HF `CLIPModel` the ONNX graph was exported from
(`vision_model` + `visual_projection`), fp16 on CUDA and fp32 on CPU, eager and under
`torch.compile`. Everything runs in one process, on one device, batch size by batch size, the
peers right after ours, so a shared machine's load drifts as little as possible between them.

torch is imported inside the functions that need it: `moderator bench --help` and the service
never load it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, cast, get_args

import numpy as np
from numpy.typing import NDArray

from moderator.bench.report import Column, Report
from moderator.embed.manifest import read_manifest
from moderator.embed.paths import DEMO_NAME, resolve_model_path
from moderator.embed.providers import select_providers
from moderator.errors import ConfigError
from moderator.types import DEFAULT_ATTENTION, AttentionKernel

__all__ = [
    "B32",
    "PEERS",
    "PIXELS_ON",
    "BenchModel",
    "Timing",
    "auto_precision",
    "bench_cache_dir",
    "resolve_bench_model",
    "run_model_bench",
    "time_calls",
    "torch_encoder",
]

B32: Final = "b32"
PEERS: Final = ("eager", "compile")
PIXELS_ON: Final = ("host", "device")
B32_DIR: Final = "clip-vit-b32-random"
# Part of the cached export's directory name: bump it when `export_clip`'s graphs change, so a
# bench never times a stale export.
EXPORT_REVISION: Final = 4
# The demo model's PyTorch checkpoint as the demo training run writes it (not committed). Where
# it is absent, the peer's checkpoint is rebuilt from the shipped ONNX files into the cache
# (`moderator.export.demo_checkpoint`).
DEMO_HF: Final = Path(".run") / "demo-hf"
# At least this many timed calls, however long they take: one call is no measurement.
MIN_ITERATIONS: Final = 3
_REPO_ROOT: Final = Path(__file__).resolve().parents[2]
_CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class BenchModel:
    """An exported model and, when known, the PyTorch checkpoint it was exported from."""

    spec: str
    onnx_dir: Path
    hf_dir: Path | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """Timed calls of one batch size."""

    iterations: int
    seconds: float
    p50_s: float

    def per_second(self, batch: int) -> float:
        return batch * self.iterations / self.seconds if self.seconds > 0 else 0.0


def bench_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/moderator/bench` (default ~/.cache): exported bench models live here."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moderator" / "bench"


def auto_precision(providers: Sequence[str]) -> str:
    """fp16 where a GPU provider will run the model, fp32 on CPU (where fp16 only adds casts)."""
    chosen = select_providers(providers)
    return "fp16" if chosen and chosen[0].name in ("cuda", "tensorrt") else "fp32"


def resolve_bench_model(
    spec: str,
    *,
    precision: str = "fp32",
    peer_model: Path | None = None,
    progress: Progress = _stderr,
    peer: bool = True,
) -> BenchModel:
    """`demo`, `b32` (a random-weight ViT-B/32, built and exported once into the bench cache)
    or an exported directory; the peer checkpoint is `peer_model`, or the one the model's
    manifest names when that directory exists here. For the demo without one, and when a
    `peer` is wanted, it is rebuilt from the shipped ONNX files on first use."""
    if spec == B32:
        hf_dir, onnx_dir = _random_b32(precision, progress)
        return BenchModel(spec, onnx_dir, peer_model or hf_dir)
    onnx_dir = resolve_model_path(spec)
    note = None
    if spec == DEMO_NAME and precision != "fp32":
        note = "the shipped demo model is fp32; --precision does not apply to it"
    if peer_model is not None:
        return BenchModel(spec, onnx_dir, peer_model, note)
    source = Path(read_manifest(onnx_dir).source.id)
    candidates = [source] if source.is_absolute() else [Path.cwd() / source, _REPO_ROOT / source]
    if spec == DEMO_NAME:
        candidates += [Path.cwd() / DEMO_HF, _REPO_ROOT / DEMO_HF]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return BenchModel(spec, onnx_dir, candidate, note)
    if spec == DEMO_NAME and peer:
        return _rebuilt_demo(spec, onnx_dir, note, progress)
    return BenchModel(spec, onnx_dir, None, note)


def _rebuilt_demo(spec: str, onnx_dir: Path, note: str | None, progress: Progress) -> BenchModel:
    """The demo's checkpoint rebuilt from its ONNX weights; none when the export extra (torch,
    transformers, onnx) is not installed."""
    try:
        from moderator.export.demo_checkpoint import demo_checkpoint
    except ImportError as exc:
        missing = f"cannot rebuild the demo's PyTorch checkpoint without moderator[export] ({exc})"
        return BenchModel(spec, onnx_dir, None, f"{note}; {missing}" if note else missing)
    return BenchModel(spec, onnx_dir, demo_checkpoint(onnx_dir, progress=progress), note)


def _random_b32(precision: str, progress: Progress) -> tuple[Path, Path]:
    """The random ViT-B/32 checkpoint and its export, made on first use (a minute or two)."""
    base = bench_cache_dir() / B32_DIR
    hf_dir, onnx_dir = base / "hf", base / f"onnx-{precision}-r{EXPORT_REVISION}"
    if not (hf_dir / "config.json").is_file():
        from moderator.export.random_clip import clip_config, save_random_clip

        progress(f"writing a random-weight ViT-B/32 checkpoint to {hf_dir}")
        # Written aside and renamed: an interrupted write never looks like a checkpoint.
        partial = base / f"hf.partial-{os.getpid()}"
        save_random_clip(partial, clip_config("ViT-B/32"), seed=0)
        shutil.rmtree(hf_dir, ignore_errors=True)
        partial.rename(hf_dir)
    if not (onnx_dir / "manifest.json").is_file():
        from moderator.export.clip import export_clip

        progress(f"exporting it ({precision}) to {onnx_dir}")
        export_clip(
            str(hf_dir),
            onnx_dir,
            precision=precision,  # type: ignore[arg-type]  # checked by the CLI
            progress=progress,
            name="random-clip-vit-b32",
        )
    return hf_dir, onnx_dir


def time_calls(
    call: Callable[[], object],
    *,
    seconds: float,
    warmup: int,
    min_iterations: int = MIN_ITERATIONS,
) -> Timing:
    """Run `call` `warmup` times untimed, then until `seconds` have passed (and at least
    `min_iterations` times)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_iterations or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return Timing(len(times), sum(times), statistics.median(times))


def _normalization(hf_dir: Path) -> tuple[list[float], list[float], float]:
    """mean, std and rescale factor from the checkpoint's preprocessor config."""
    path = hf_dir / "preprocessor_config.json"
    config: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return (
        list(config.get("image_mean", _CLIP_MEAN)),
        list(config.get("image_std", _CLIP_STD)),
        float(config.get("rescale_factor", 1 / 255)),
    )


def torch_encoder(
    hf_dir: Path, *, device: str, half: bool, compile_graph: bool, compile_mode: str = "default"
) -> Callable[[Any], NDArray[np.float32]]:
    """The PyTorch peer: (n, S, S, 3) uint8 pixels (a host array, or a tensor already on
    `device`) → (n, dim) float32 host embeddings, through HF CLIPModel's vision tower and
    projection (`get_image_features` returns an output object in transformers 5.x, so the two
    modules are called directly)."""
    import torch
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # bars bury our lines
    dtype = torch.float16 if half else torch.float32
    clip: Any = CLIPModel.from_pretrained(str(hf_dir))
    clip = clip.eval().to(device=device, dtype=dtype)
    vision, projection = clip.vision_model, clip.visual_projection
    mean, std, rescale = _normalization(hf_dir)
    # (x · rescale − mean) / std as (x − offset) / scale on the 0..255 scale, as our graph does.
    offset = torch.tensor([m / rescale for m in mean], device=device, dtype=dtype).view(1, 3, 1, 1)
    scale = torch.tensor([s / rescale for s in std], device=device, dtype=dtype).view(1, 3, 1, 1)

    def forward(pixels: Any) -> Any:
        x = (pixels.permute(0, 3, 1, 2).to(dtype) - offset) / scale
        embeds = projection(vision(pixel_values=x).pooler_output)
        return embeds / embeds.norm(dim=-1, keepdim=True)

    # dynamic=False: one graph specialised per batch size, as a fixed-batch deployment has.
    run = torch.compile(forward, dynamic=False, mode=compile_mode) if compile_graph else forward

    def encode(pixels: Any) -> NDArray[np.float32]:
        with torch.inference_mode():
            if not isinstance(pixels, torch.Tensor):
                pixels = torch.from_numpy(pixels).to(device)
            out = run(pixels)
            result: NDArray[np.float32] = out.float().cpu().numpy()  # .cpu() waits for the GPU
        return result

    return encode


def _on_device(pixels: NDArray[np.uint8]) -> Any:
    """The batch as a CUDA tensor, written and synchronized before any timing starts."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--pixels device needs torch with CUDA to place the batch")
    tensor = torch.from_numpy(pixels).to("cuda")
    torch.cuda.synchronize()
    return tensor


def _cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float((num / den).min())


COLUMNS: Final = [
    Column("batch", "batch"),
    Column("ours_img_s", "ours img/s"),
    Column("ours_ms", "ours ms/batch"),
    Column("eager_img_s", "eager img/s"),
    Column("compile_img_s", "compile img/s"),
    Column("ratio_eager", "ours/eager"),
    Column("ratio_compile", "ours/compile"),
]


def run_model_bench(
    model: str,
    *,
    batches: Sequence[int],
    precision: str,
    providers: Sequence[str],
    peers: Sequence[str],
    seconds: float,
    warmup: int,
    peer_model: Path | None = None,
    threads: int = 0,
    compile_mode: str = "default",
    pixels_on: str = "host",
    attention: str = DEFAULT_ATTENTION,
    cuda_graphs: bool = True,
    seed: int = 0,
    progress: Progress = _stderr,
) -> Report:
    """Time ours and each peer at each batch size; the report's `ratio` is ours ÷ the last
    named peer (compile, when asked for) at the largest batch. `threads` > 0 sets the CPU
    threads of both ONNX Runtime and torch (0: each library's default). `pixels_on` "device"
    puts the input batch in GPU memory before timing, as a GPU decoder leaves it, so neither
    side pays the host→device copy ("host": both do). `cuda_graphs` runs ours as `serve` does
    with `model.cuda_graphs` (device pixels are then copied into the graph's own buffer)."""
    from moderator.embed import load_model

    if not batches or min(batches) < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {list(batches)}")
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise ConfigError(f"unknown peer(s) {unknown}; use {list(PEERS)} or none")
    if pixels_on not in PIXELS_ON:
        raise ConfigError(f"--pixels must be one of {list(PIXELS_ON)}, got {pixels_on!r}")
    kernels = get_args(AttentionKernel)
    if attention not in kernels:
        raise ConfigError(f"--attention must be one of {list(kernels)}, got {attention!r}")
    if precision == "auto":
        precision = auto_precision(providers)
    bench_model = resolve_bench_model(
        model, precision=precision, peer_model=peer_model, progress=progress, peer=bool(peers)
    )
    report = Report("model", COLUMNS)
    if bench_model.note:
        report.notes.append(bench_model.note)
    runtime = load_model(
        bench_model.onnx_dir,
        providers=providers,
        max_batch=max(batches),
        intra_op_threads=threads,
        verify=False,
        attention=cast(AttentionKernel, attention),
        cuda_graphs=cuda_graphs,
    )
    gpu = runtime.provider in ("cuda", "tensorrt")
    if pixels_on == "device" and not gpu:
        raise ConfigError(f"--pixels device needs a GPU provider; ours runs on {runtime.provider}")
    report.config = {
        "model": model,
        "onnx_dir": str(bench_model.onnx_dir),
        "peer_checkpoint": str(bench_model.hf_dir) if bench_model.hf_dir else None,
        "model_id": runtime.model_id,
        "precision": runtime.manifest.precision,
        "provider": runtime.provider,
        "image_size": runtime.image_size,
        "batches": list(batches),
        "seconds": seconds,
        "warmup": warmup,
        "peers": list(peers),
        "threads": threads or None,
        "compile_mode": compile_mode,
        "attention_kernel": runtime.info()["attention_kernel"],
        "cuda_graphs": runtime.info()["cuda_graphs"],
        "timing_includes_host_to_device": pixels_on == "host",
        "input": f"uint8 NHWC in {pixels_on} memory; embeddings returned to host memory as float32",
    }
    encoders: dict[str, Callable[[Any], NDArray[np.float32]]] = {}
    if peers and bench_model.hf_dir is None:
        report.notes.append(
            "peers skipped: no PyTorch checkpoint for this model (pass --peer-model DIR)"
        )
        peers = []
    if peers:
        import torch

        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
        if gpu and device == "cpu":
            report.notes.append("ours runs on the GPU but torch sees no CUDA: peers on CPU")
        assert bench_model.hf_dir is not None
        for peer in peers:
            encoders[peer] = torch_encoder(
                bench_model.hf_dir,
                device=device,
                half=device == "cuda",
                compile_graph=peer == "compile",
                compile_mode=compile_mode,
            )
        report.config |= {
            "peer_device": device,
            "peer_dtype": "fp16" if device == "cuda" else "fp32",
            "torch_threads": torch.get_num_threads(),
        }
    rng = np.random.default_rng(seed)
    size = runtime.image_size
    for batch in batches:
        host = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        pixels: Any = host
        encode_ours: Callable[[Any], NDArray[np.float32]] = runtime.encode_pixels
        if pixels_on == "device":
            pixels, encode_ours = _on_device(host), runtime.encode_device_pixels
        progress(f"batch {batch}: ours ({runtime.provider}, pixels in {pixels_on} memory)")
        ours = time_calls(partial(encode_ours, pixels), seconds=seconds, warmup=warmup)
        row: dict[str, Any] = {
            "batch": batch,
            "ours_img_s": ours.per_second(batch),
            "ours_ms": ours.p50_s * 1000,
            "ours_iterations": ours.iterations,
        }
        reference = runtime.encode_pixels(host)
        if pixels_on == "device":  # the in-place device binding must see the same pixels
            row["ours_device_min_cosine_vs_host"] = _cosine(reference, encode_ours(pixels))
        for peer, encode in encoders.items():
            progress(f"batch {batch}: {peer}")
            started = time.perf_counter()
            first = encode(pixels)  # compiles, for torch.compile
            row[f"{peer}_first_call_s"] = time.perf_counter() - started
            row[f"{peer}_min_cosine_vs_ours"] = _cosine(reference, first)
            timing = time_calls(partial(encode, pixels), seconds=seconds, warmup=warmup)
            row[f"{peer}_img_s"] = timing.per_second(batch)
            row[f"{peer}_ms"] = timing.p50_s * 1000
            row[f"ratio_{peer}"] = row["ours_img_s"] / row[f"{peer}_img_s"]
        report.rows.append(row)
    largest = max(report.rows, key=lambda r: r["batch"])
    named = list(encoders)[-1] if encoders else None
    report.results = {
        "ratio": largest.get(f"ratio_{named}") if named else None,
        "peer": named,
        "ratio_batch": largest["batch"],
        "ratios": {p: {str(r["batch"]): r[f"ratio_{p}"] for r in report.rows} for p in encoders},
        "ours_img_s": {str(r["batch"]): r["ours_img_s"] for r in report.rows},
    }
    report.finish()
    return report
