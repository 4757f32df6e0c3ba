"""The CLIP encoder the service runs: two ONNX Runtime sessions, a tokenizer and a manifest.

`load_model` picks the execution providers that can really run here (see `providers`),
verifies the files against the manifest, opens the sessions and runs one tiny batch through
each, so the first real batch does not pay for CUDA/cuDNN initialisation.

Threads: `InferenceSession.run` may be called from several threads at once, and every call
here builds its own inputs (and IO binding), so one runtime serves concurrent callers.
Inference blocks for the whole batch, so async code calls `encode_*` from a worker thread
(`asyncio.to_thread` or an executor), never on the event loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from moderator.embed.graphs import VisionGraphs
from moderator.embed.manifest import (
    TEXT_NAME,
    TOKENIZER_NAME,
    VISION_NAME,
    Manifest,
    read_manifest,
    verify_files,
)
from moderator.embed.paths import resolve_model_path
from moderator.embed.providers import SHORT_NAMES, Provider, select_providers
from moderator.embed.tokenize import TextTokenizer
from moderator.errors import ModelError
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image
from moderator.types import DEFAULT_ATTENTION, AttentionKernel, Embeddings, Encoder, Pixels

__all__ = ["ClipRuntime", "load_model"]

log = logging.getLogger(__name__)

PIXELS: Final = "pixels"
INPUT_IDS: Final = "input_ids"
ATTENTION_MASK: Final = "attention_mask"
EMBEDDINGS: Final = "embeddings"
_GPU_PROVIDERS: Final = frozenset({"cuda", "tensorrt"})

# The CUDA provider's `sdpa_kernel` bit flags (ORT's AttentionBackend); 0 lets ORT choose.
_SDPA_KERNEL: Final[dict[AttentionKernel, int]] = {
    "auto": 0,
    "flash": 1,
    "efficient": 2,
    "cudnn": 8,
}


class ClipRuntime:
    """CLIP image and text embeddings on ONNX Runtime; implements `moderator.types.Encoder`."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        vision: ort.InferenceSession,
        text: ort.InferenceSession,
        tokenizer: TextTokenizer,
        *,
        device_id: int = 0,
        attention: AttentionKernel = "auto",
        graphs: VisionGraphs | None = None,
    ) -> None:
        self.directory = directory
        self._graphs = graphs
        self._attention = attention
        self.manifest = manifest
        self._vision = vision
        self._text = text
        self._tokenizer = tokenizer
        self._device_id = device_id
        first: str = vision.get_providers()[0]
        self._provider = SHORT_NAMES.get(first, first)
        self._text_inputs = frozenset(i.name for i in text.get_inputs())
        # Where outputs are bound with IO binding; None runs plain `session.run` (CPU).
        self._bind_device: str | None = "cuda" if self._provider in _GPU_PROVIDERS else None
        self.preprocess = PreprocessSpec.for_model(
            manifest.image_size, manifest.resize_shortest_edge
        )
        _check_graph(vision, VISION_NAME, {PIXELS}, manifest.embed_dim)
        _check_graph(text, TEXT_NAME, {INPUT_IDS}, manifest.embed_dim)

    # --- Encoder protocol -------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def logit_scale(self) -> float:
        return self.manifest.logit_scale

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def provider(self) -> str:
        """The execution provider running the graphs: "tensorrt", "cuda" or "cpu"."""
        return self._provider

    def count_tokens(self, text: str) -> int:
        return self._tokenizer.count(text)

    def encode_texts(self, texts: list[str]) -> Embeddings:
        """L2-normalized (n, dim) float32; raises TextTooLong rather than truncating."""
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        ids, mask = self._tokenizer.encode(texts)
        feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask}
        return self._run(self._text, {k: v for k, v in feeds.items() if k in self._text_inputs})

    def encode_pixels(self, pixels: Pixels) -> Embeddings:
        """(n, S, S, 3) uint8 RGB → L2-normalized (n, dim) float32."""
        size = self.image_size
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
            got = getattr(pixels, "dtype", type(pixels).__name__)
            raise ValueError(f"pixels must be a uint8 array, got {got}")
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"pixels must have shape (n, {size}, {size}, 3), got {pixels.shape}")
        if len(pixels) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        if self._graphs is not None:
            return self._graphs.encode_host(np.ascontiguousarray(pixels))
        return self._run(self._vision, {PIXELS: np.ascontiguousarray(pixels)})

    def encode_device_pixels(self, pixels: Any) -> Embeddings:
        """(n, S, S, 3) uint8 pixels already in this runtime's GPU memory → embeddings.

        `pixels` is anything exposing `__cuda_array_interface__` (a torch CUDA tensor, a CuPy
        array, a GPU decoder's output), C-contiguous. The graph reads it in place: no host
        round trip, which at batch 256 is a third of the time `encode_pixels` spends. ONNX
        Runtime runs on its own stream and ignores the interface's `stream` entry, so the
        producer must have finished writing (e.g. `torch.cuda.current_stream().synchronize()`)
        before this call; the memory must be on this runtime's device (`info()["device_id"]`).
        """
        if self._bind_device is None:
            raise ModelError(
                f"device pixels need a GPU provider; this runtime runs on {self.provider}"
            )
        interface = getattr(pixels, "__cuda_array_interface__", None)
        if not isinstance(interface, dict):
            raise ValueError(f"{type(pixels).__name__} exposes no __cuda_array_interface__")
        shape = tuple(int(d) for d in interface["shape"])
        size = self.image_size
        if interface["typestr"] != "|u1":
            raise ValueError(f"device pixels must be uint8, got typestr {interface['typestr']!r}")
        if len(shape) != 4 or shape[1:] != (size, size, 3):
            raise ValueError(f"pixels must have shape (n, {size}, {size}, 3), got {shape}")
        if not _c_contiguous(shape, interface.get("strides")):
            raise ValueError("device pixels must be C-contiguous (call .contiguous() first)")
        if shape[0] == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        pointer = int(interface["data"][0])
        if self._graphs is not None:
            return self._graphs.encode_device(pointer, shape[0])
        binding = self._vision.io_binding()
        binding.bind_input(PIXELS, "cuda", self._device_id, np.uint8, list(shape), pointer)
        return self._run_bound(self._vision, binding)

    def encode_images(self, images: list[bytes]) -> Embeddings:
        """Decode + preprocess + embed; the first bad image raises its DecodeError."""
        if not images:
            return np.zeros((0, self.embed_dim), np.float32)
        return self.encode_pixels(np.stack([decode_image(b, self.preprocess) for b in images]))

    # --- the rest ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What is running, for logs, /readyz and the CLI."""
        return {
            "model_id": self.model_id,
            "sha256": self.sha256,
            "path": str(self.directory),
            "provider": self.provider,
            "providers": list(self._vision.get_providers()),
            "device_id": self._device_id if self.provider in _GPU_PROVIDERS else None,
            # TensorRT hands the nodes it cannot run to the CUDA provider, with the same option.
            "attention_kernel": self._attention if self.provider in _GPU_PROVIDERS else None,
            "cuda_graphs": self._graphs is not None,
            "precision": self.manifest.precision,
            "optimized": self.manifest.optimized.applied,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "context_length": self.context_length,
        }

    def warm_up(self, max_batch: int = 1) -> None:
        """First runs now, not on a request: the text tower once; the image tower at every
        batch size up to `max_batch` on a GPU without CUDA graphs, since CUDA sets up kernels
        per shape and `serve` meets every size (graphs captured their buckets at load; on the
        CPU one size stands for all)."""
        size = self.image_size
        sizes = 1
        if self._graphs is None and self.provider in _GPU_PROVIDERS:
            sizes = max_batch
        for count in range(1, sizes + 1):
            self.encode_pixels(np.zeros((count, size, size, 3), np.uint8))
        self.encode_texts(["warm up"])

    def _run(self, session: ort.InferenceSession, feeds: Mapping[str, NDArray[Any]]) -> Embeddings:
        if self._bind_device is None:
            result: Embeddings = np.asarray(session.run([EMBEDDINGS], dict(feeds))[0], np.float32)
            return result
        # Inputs go up from host memory, the output is bound on the device and copied back
        # once: no intermediate host staging of the (small) uint8 input or the output.
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        return self._run_bound(session, binding)

    def _run_bound(self, session: ort.InferenceSession, binding: ort.IOBinding) -> Embeddings:
        """Run with inputs already bound: the output on the device, copied back once."""
        assert self._bind_device is not None
        binding.bind_output(EMBEDDINGS, self._bind_device, self._device_id)
        session.run_with_iobinding(binding)
        result: Embeddings = np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return result


def _c_contiguous(shape: tuple[int, ...], strides: Sequence[int] | None) -> bool:
    """`__cuda_array_interface__` gives strides None for C order, or byte strides (uint8)."""
    if strides is None:
        return True
    if len(strides) != len(shape):
        return False
    expected, step = [], 1
    for dim in reversed(shape):
        expected.append(step)
        step *= dim
    return all(s == e for s, e, d in zip(strides, reversed(expected), shape, strict=True) if d > 1)


def _check_graph(
    session: ort.InferenceSession, name: str, required: set[str], embed_dim: int
) -> None:
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if missing := required - inputs:
        raise ModelError(f"{name} lacks the input(s) {sorted(missing)} (has {sorted(inputs)})")
    if EMBEDDINGS not in outputs:
        raise ModelError(f"{name} lacks the output {EMBEDDINGS!r} (has {sorted(outputs)})")
    dim = outputs[EMBEDDINGS][-1]
    if isinstance(dim, int) and dim != embed_dim:
        raise ModelError(f"{name} gives {dim}-d embeddings, the manifest says {embed_dim}")


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads  # 0: ORT picks (physical cores)
    # Idle pool threads would otherwise spin for a while after each batch, taking CPU from
    # the decode workers that run beside inference.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _trt_cache_dir(manifest: Manifest) -> str:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "moderator" / "tensorrt" / manifest.sha256[:16]
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _provider_options(
    provider: Provider,
    *,
    device_id: int,
    manifest: Manifest,
    profile: tuple[str, str, str] | None,
    attention: AttentionKernel,
    cuda_graph: bool = False,
) -> dict[str, str]:
    if provider.name == "cuda":
        options = {"device_id": str(device_id)}
        if _SDPA_KERNEL[attention]:
            options["sdpa_kernel"] = str(_SDPA_KERNEL[attention])
        if cuda_graph:
            options["enable_cuda_graph"] = "1"
        return options
    if provider.name == "tensorrt":
        options = {
            "device_id": str(device_id),
            "trt_fp16_enable": str(manifest.precision == "fp16"),
            # Engines take minutes to build; cache them per model hash across restarts.
            "trt_engine_cache_enable": "True",
            "trt_timing_cache_enable": "True",
            "trt_engine_cache_path": _trt_cache_dir(manifest),
        }
        if profile is not None:
            # One optimisation profile covering every batch size the service sends.
            options["trt_profile_min_shapes"] = profile[0]
            options["trt_profile_opt_shapes"] = profile[1]
            options["trt_profile_max_shapes"] = profile[2]
        return options
    return {}


def _open_session(
    path: Path,
    providers: Sequence[Provider],
    *,
    options: ort.SessionOptions,
    device_id: int,
    manifest: Manifest,
    profile: tuple[str, str, str],
    attention: AttentionKernel,
    cuda_graph: bool = False,
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=[
                (
                    p.ort_name,
                    _provider_options(
                        p,
                        device_id=device_id,
                        manifest=manifest,
                        profile=profile,
                        attention=attention,
                        cuda_graph=cuda_graph,
                    ),
                )
                for p in providers
            ],
        )
    except Exception as exc:  # onnxruntime raises its own non-exported exception types
        raise ModelError(f"{path}: onnxruntime cannot load it ({exc})") from exc


def load_model(
    path: str | Path = "demo",
    *,
    providers: Sequence[str] = ("cuda", "cpu"),
    device_id: int = 0,
    intra_op_threads: int = 0,
    verify: bool = True,
    max_batch: int = 64,
    attention: AttentionKernel = DEFAULT_ATTENTION,
    cuda_graphs: bool = False,
) -> ClipRuntime:
    """Open an exported model directory (or "demo") on the best provider that can run here.

    `providers` is an order of preference among "tensorrt", "cuda" and "cpu"; those that
    cannot run on this machine are skipped. `verify` checks every file's sha256 against the
    manifest (about a second per 500 MB). `max_batch` only shapes TensorRT's optimisation
    profile. `attention` picks the CUDA provider's fused attention kernel. The default,
    CUTLASS memory-efficient attention, was measured on an H200 against ORT's own choice
    there, cuDNN flash attention. It was 7 % faster at batch 256 and 10 % at 32 for ViT-B/32
    fp16, and it needs no set-up per new batch size: cuDNN builds a plan for each shape,
    about 46 ms the first time a size is seen, and the service sees many sizes. TensorRT
    cannot run the fused com.microsoft ops of an optimized export; export with
    `optimize=False` for it, or those nodes run on CUDA.

    `cuda_graphs` (CUDA provider only) replays the image tower as a CUDA graph per batch
    bucket up to `max_batch` (`moderator.embed.graphs`), all captured here. If that fails,
    the runtime logs a warning and runs without graphs.
    """
    directory = resolve_model_path(path)
    manifest = read_manifest(directory)
    for name in (VISION_NAME, TEXT_NAME, TOKENIZER_NAME):
        if name not in manifest.files:
            raise ModelError(f"{directory}: the manifest lists no {name}")
    if verify:
        verify_files(directory, manifest)
    chosen = select_providers(providers, device_id=device_id)
    options = _session_options(intra_op_threads)
    size, ctx = manifest.image_size, manifest.context_length

    def open_vision(cuda_graph: bool) -> ort.InferenceSession:
        return _open_session(
            directory / VISION_NAME,
            chosen,
            options=options,
            device_id=device_id,
            manifest=manifest,
            attention=attention,
            profile=(
                f"{PIXELS}:1x{size}x{size}x3",
                f"{PIXELS}:{max_batch}x{size}x{size}x3",
                f"{PIXELS}:{max_batch}x{size}x{size}x3",
            ),
            cuda_graph=cuda_graph,
        )

    text = _open_session(
        directory / TEXT_NAME,
        chosen,
        options=options,
        device_id=device_id,
        manifest=manifest,
        attention=attention,
        profile=(
            f"{INPUT_IDS}:1x2",
            f"{INPUT_IDS}:{max_batch}x{ctx}",
            f"{INPUT_IDS}:{max_batch}x{ctx}",
        ),
    )
    tokenizer = TextTokenizer.from_dir(directory, manifest)

    def build(vision: ort.InferenceSession, graphs: VisionGraphs | None) -> ClipRuntime:
        return ClipRuntime(
            directory,
            manifest,
            vision,
            text,
            tokenizer,
            device_id=device_id,
            attention=attention,
            graphs=graphs,
        )

    runtime = None
    if cuda_graphs and chosen[0].name == "cuda":
        graphs = None
        try:
            vision = open_vision(cuda_graph=True)
            graphs = VisionGraphs(
                vision,
                device_id=device_id,
                image_size=size,
                embed_dim=manifest.embed_dim,
                max_batch=max_batch,
                pixels_name=PIXELS,
                output_name=EMBEDDINGS,
            )
            graphs.warm_up()  # the capture: where graphs fail if they are going to
            runtime = build(vision, graphs)
        except Exception as exc:  # ORT's capture errors have their own types
            log.warning(
                "CUDA graphs failed; the image tower runs without them",
                extra={"fields": {"error": str(exc)[:300]}},
            )
            if graphs is not None:
                graphs.close()
            graphs = vision = None  # the failed session's memory goes before the next opens
    if runtime is None:
        runtime = build(open_vision(cuda_graph=False), None)
    runtime.warm_up(max_batch)
    log.info(
        "model loaded",
        extra={"fields": {k: runtime.info()[k] for k in ("model_id", "provider", "precision")}},
    )
    return runtime


if TYPE_CHECKING:
    _conforms: type[Encoder] = ClipRuntime  # mypy checks the class against the Protocol
