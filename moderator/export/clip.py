"""Export a Hugging Face CLIP checkpoint to the ONNX directory the runtime loads.

    vision.onnx     pixels uint8 NHWC (n, S, S, 3) → embeddings float32 (n, dim), L2-normalized;
                    /255 and mean/std are folded into the patch-embedding weights, which read
                    the NHWC patches directly, so the service ships 4× fewer bytes to the GPU
                    than float NCHW and has no per-model numpy maths.
    text.onnx       input_ids int64 (n, seq) → embeddings float32 (n, dim), L2-normalized.
    tokenizer.json  the checkpoint's fast tokenizer, read with `tokenizers` alone at serve time.
    manifest.json   everything else the runtime needs, and every file's sha256.

The text graph takes no attention mask. CLIP's text tower is causal and pools the eos token, so
with right padding (all the runtime sends) padding never reaches the pooled row and a key mask
changes nothing; left out, the causal mask keeps the shape ORT's CLIP attention fusion matches
(with it, no text Attention node fuses), and on CUDA the fused kernel needs no mask input.

The legacy TorchScript exporter is used (dynamo=False): it needs no extra packages, is stable
on HF CLIP, and gives the op patterns the ORT transformers optimizer was written against.
Every export is checked against PyTorch on probe inputs before the manifest is written, and
an optimized, fp16 or int8 graph that misses the bar falls back to the plain graph at the same
precision rather than ship; when that misses too, the export fails. int8 (for CPUs) quantizes
the vision tower only; the text tower stays fp32.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from numpy.typing import NDArray
from torch import nn

import moderator
from moderator.embed.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TEXT_NAME,
    TOKENIZER_NAME,
    VISION_NAME,
    Manifest,
    Optimization,
    Source,
    file_sha256,
    model_sha256,
)
from moderator.embed.tokenize import TextTokenizer
from moderator.errors import ModelError

__all__ = ["DEFAULT_MODEL", "export_clip"]

DEFAULT_MODEL: Final = "openai/clip-vit-base-patch32"
Precision = Literal["fp32", "fp16", "int8"]

# onnxruntime 1.31 loads IR ≤ 10; newer onnx packages stamp 11+ by default.
MAX_IR_VERSION: Final = 10
# protobuf's hard limit is 2 GiB; above this a graph's weights go to a side file.
_EXTERNAL_DATA_BYTES: Final = 1_800_000_000
# Lowest cosine (ONNX vs PyTorch) accepted on the probe inputs. fp16 keeps ~3 significant
# digits per op, so 1e-3 is its budget; fp32 differs only by op order and fused kernels;
# int8 rounds every activation entering a matrix product to 256 levels (random-weight
# ViT-B/32: 0.9998 with per-channel weights).
MIN_COSINE: Final[dict[str, float]] = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
# Probe texts for tokenizer and parity checks; ones over a model's context are skipped.
_PROBE_TEXTS: Final = (
    "a photo of a cat",
    "A RED circle, on a white background!",
    "x",
    "",
    "an illustration of two dogs playing in the snow next to a small wooden house",
)
_PROBE_IMAGES: Final = 3
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# The fused op types ORT's CLIP optimizer reports; all are recorded, zero or not.
_FUSED_OPS: Final = (
    "Attention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "QuickGelu",
    "Gelu",
    "FastGelu",
    "BiasGelu",
)

Progress = Callable[[str], None]


@dataclass
class _Checkpoint:
    model: Any  # transformers.CLIPModel
    tokenizer: Any  # a fast tokenizer
    processor: Any  # CLIPImageProcessor
    source: Source
    model_id: str


# --- loading --------------------------------------------------------------------------------


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def _download(repo_id: str, progress: Progress) -> tuple[Path, str | None]:
    """Fetch the files a CLIP checkpoint needs from the hub; (snapshot dir, commit hash)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    progress(f"downloading {repo_id} from the Hugging Face hub")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        if not any(path.glob("*.safetensors")):  # older repos ship only pickled weights
            path = Path(snapshot_download(repo_id, allow_patterns=["pytorch_model.bin"]))
    except GatedRepoError as exc:
        raise ModelError(
            f"{repo_id} is gated on the hub: log in with an account that has access"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(f"unknown model {repo_id!r}: no such (public) hub repository") from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"{repo_id}: revision not found on the hub") from exc
    except LocalEntryNotFoundError as exc:  # offline, and nothing cached
        raise ModelError(
            f"could not download {repo_id}: no network? use a local dir ({exc.__cause__ or exc})"
        ) from exc
    except Exception as exc:  # httpx connection errors, HTTP 5xx, disk errors
        why = f"{type(exc).__name__}: {exc}"
        raise ModelError(
            f"could not download {repo_id}: no network? use a local dir ({why})"
        ) from exc
    revision = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else None
    return path, revision


def _load(model: str, progress: Progress) -> _Checkpoint:
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    local = Path(model).expanduser()
    if local.is_dir():
        directory, source = local, Source(id=str(local), revision=None)
        model_id = local.resolve().name
    elif local.exists():
        raise ModelError(f"{model} is a file; give a checkpoint directory or a hub id")
    elif _looks_like_path(model) or not _HUB_ID.match(model):
        raise ModelError(f"model directory {model} does not exist")
    else:
        directory, revision = _download(model, progress)
        source, model_id = Source(id=model, revision=revision), model

    progress(f"loading checkpoint from {directory}")
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: not a transformers checkpoint ({exc})") from exc
    if config.model_type != "clip":
        raise ModelError(
            f"{model} holds a {config.model_type!r} model, not CLIP (config.model_type)"
        )
    try:
        # Eager attention: SDPA traces to a decomposed pattern ORT's CLIP fusion does not
        # match (0 Attention nodes fused instead of one per layer).
        clip: Any = CLIPModel.from_pretrained(
            directory, attn_implementation="eager", dtype=torch.float32
        )
        clip.eval()
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: cannot load the CLIP weights ({exc})") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{directory}: cannot load the tokenizer ({exc})") from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelError(f"{directory}: the tokenizer has no fast (tokenizers) version")
    try:
        # Untyped in some transformers releases, typed in others: a plain callable suits both.
        load_processor: Callable[..., Any] = AutoImageProcessor.from_pretrained
        processor = load_processor(directory)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: cannot load the image processor ({exc})") from exc
    return _Checkpoint(clip, tokenizer, processor, source, model_id)


@dataclass(frozen=True)
class _Preprocess:
    image_size: int
    resize_shortest_edge: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float


def _preprocess(ckpt: _Checkpoint) -> _Preprocess:
    """The processor's settings, checked against what the runtime's decoder reproduces."""
    proc, vision_size = ckpt.processor, ckpt.model.config.vision_config.image_size
    size = _as_dict(getattr(proc, "size", None))
    crop = _as_dict(getattr(proc, "crop_size", None)) or {"height": vision_size}
    if "shortest_edge" not in size:
        raise ModelError(f"image processor size {size}: only shortest-edge resizing is supported")
    side = crop.get("height")
    if side != crop.get("width", side) or side != vision_size:
        raise ModelError(f"crop {crop} does not match the vision tower's {vision_size} px input")
    mean = proc.image_mean if getattr(proc, "do_normalize", True) else (0.0, 0.0, 0.0)
    std = proc.image_std if getattr(proc, "do_normalize", True) else (1.0, 1.0, 1.0)
    rescale = float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0
    return _Preprocess(
        image_size=int(vision_size),
        resize_shortest_edge=int(size["shortest_edge"]),
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        rescale=rescale,
    )


def _as_dict(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, int):  # legacy configs give a bare int
        return {"shortest_edge": value, "height": value, "width": value}
    return {k: int(v) for k, v in dict(value).items() if v is not None}


# --- the two graphs -------------------------------------------------------------------------


class _VisionGraph(nn.Module):
    """uint8 NHWC pixels → normalized image embeddings, preprocessing included.

    The patch embedding is a stride-P convolution with P×P kernels, i.e. one matrix product
    over non-overlapping patches. It is written as reshape + MatMul on the NHWC input with the
    /255, mean and std folded into the weights and the position embeddings: on CUDA the
    convolution was the largest single kernel (2.1 ms of 10.3 per batch of 256 on an H200,
    ViT-B/32 fp16), where a GEMM of the same size takes a fraction of that, and the NCHW
    transpose and the normalization passes disappear. The rest is HF's tower, module by
    module (its MLPs as `_BiasFoldedMLP` when folding); parity with `vision_model(...)`
    itself is checked after export.
    """

    patch_weight: torch.Tensor
    positions: torch.Tensor

    def __init__(self, clip: Any, pre: _Preprocess, *, fold_mlp_bias: bool = False) -> None:
        super().__init__()
        vision = clip.vision_model
        self.pre_layrnorm = vision.pre_layrnorm
        self.encoder = vision.encoder
        if fold_mlp_bias:
            # A copy of the module tree (sharing the weights): the checkpoint's own modules
            # stay untouched for the parity reference.
            shared = {id(t): t for t in (*vision.encoder.parameters(), *vision.encoder.buffers())}
            self.encoder = copy.deepcopy(vision.encoder, memo=shared)
            for layer in self.encoder.layers:
                layer.mlp = _BiasFoldedMLP(layer.mlp)
        self.post_layernorm = vision.post_layernorm
        self.projection = clip.visual_projection
        embeddings = vision.embeddings
        conv = embeddings.patch_embedding.weight.detach().to(torch.float32)  # (D, 3, P, P)
        dim, _, patch, _ = conv.shape
        size = pre.image_size
        if size % patch:
            raise ModelError(f"image size {size} is not a multiple of the patch size {patch}")
        self.patch, self.grid = patch, size // patch
        # x_norm = (x·rescale − mean) / std = x / scale − offset / scale, per channel.
        scale = torch.tensor([s / pre.rescale for s in pre.std]).view(1, 3, 1, 1)
        offset = torch.tensor([m / pre.rescale for m in pre.mean]).view(1, 3, 1, 1)
        weight = conv / scale
        bias = -(conv * offset / scale).sum(dim=(1, 2, 3))  # (D,)
        # Patch pixels flattened in (row, column, channel) order, as NHWC lays them out.
        self.register_buffer(
            "patch_weight", weight.permute(2, 3, 1, 0).reshape(patch * patch * 3, dim).clone()
        )
        positions = embeddings.position_embedding.weight.detach().to(torch.float32).clone()
        positions[1:] += bias  # the folded normalization's constant term, once per patch
        positions[0] += embeddings.class_embedding.detach().to(torch.float32)
        self.register_buffer("positions", positions.unsqueeze(0))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p, g = self.patch, self.grid
        x = pixels.to(torch.float32).reshape(-1, g, p, g, p, 3)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, g * g, p * p * 3)
        patches = torch.matmul(x, self.patch_weight)
        # A zero row in front becomes the class token once the positions are added (they
        # carry the class embedding): no batch-sized expand, so no shape ops in the graph.
        hidden = nn.functional.pad(patches, (0, 0, 1, 0)) + self.positions
        hidden = self.pre_layrnorm(hidden)
        hidden = self.encoder(inputs_embeds=hidden).last_hidden_state
        pooled = self.post_layernorm(hidden[:, 0, :])
        embeds: torch.Tensor = self.projection(pooled)
        normalized: torch.Tensor = embeds / embeds.norm(dim=-1, keepdim=True)
        return normalized


_ONES: Final = 8  # columns of ones appended for a folded bias


class _BiasFoldedMLP(nn.Module):
    """CLIP's MLP with fc1's bias carried by the matrix product itself.

    The input gets `_ONES` columns of ones and fc1's weight the matching rows (the bias, then
    zeros): x·W + b = [x, 1]·[W; b]. On CUDA, ORT adds HF's bias in its own pass over the
    (tokens × 4·width) output (1.0–1.1 ms of a ViT-B/32 batch of 256 on an H200); widening the
    (tokens × width) input by Concat takes 0.28 ms. Eight columns keep the inner dimension a
    multiple of 8 for tensor cores.
    Not for int8: a bias row would widen each column's quantization range.
    """

    fc1_weight: torch.Tensor

    def __init__(self, mlp: Any) -> None:
        super().__init__()
        weight = mlp.fc1.weight.detach().t()  # (width, inner)
        bias = mlp.fc1.bias.detach().view(1, -1)
        extra = torch.zeros((_ONES - 1, weight.shape[1]), dtype=weight.dtype, device=weight.device)
        self.register_buffer("fc1_weight", torch.cat([weight, bias, extra]).contiguous())
        self.activation_fn = mlp.activation_fn
        self.fc2 = mlp.fc2

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # Concat, not Pad: ORT's Concat kernel takes half the time of its Pad kernel here
        # (0.28 vs 0.58 ms per batch of 256 on an H200, docs/performance.md).
        ones = hidden.new_ones((*hidden.shape[:-1], _ONES))
        padded = torch.cat([hidden, ones], dim=-1)
        inner = self.activation_fn(torch.matmul(padded, self.fc1_weight))
        out: torch.Tensor = self.fc2(inner)
        return out


class _TextGraph(nn.Module):
    """token ids → normalized text embeddings, HF CLIP's text tower with its own causal mask.

    HF builds the mask through `masking_utils`, which traces into ops no fusion recognises;
    this builds the same additive causal mask the way ORT's CLIP fusion expects. Parity with
    `text_model(...)` itself is checked after export.
    """

    def __init__(self, clip: Any, pooling: str, eos: int) -> None:
        super().__init__()
        self.text = clip.text_model
        self.projection = clip.text_projection
        self.pooling = pooling
        self.eos = eos

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.text.embeddings(input_ids=input_ids)
        batch, seq = input_ids.shape
        mask = torch.full((seq, seq), torch.finfo(hidden.dtype).min)
        steps = torch.arange(seq)
        mask = mask.masked_fill(steps < (steps + 1).view(seq, 1), 0.0)
        mask = mask[None, None, :, :].expand(batch, 1, seq, seq)
        hidden = self.text.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        hidden = self.text.final_layer_norm(hidden)
        ids = input_ids.to(torch.int32)  # as HF does: ArgMax over int64 is not supported everywhere
        if self.pooling == "argmax":  # checkpoints whose config says eos_token_id == 2
            position = ids.argmax(dim=-1)
        else:
            position = (ids == self.eos).to(torch.int32).argmax(dim=-1)
        pooled = hidden[torch.arange(batch), position]
        embeds: torch.Tensor = self.projection(pooled)
        normalized: torch.Tensor = embeds / embeds.norm(dim=-1, keepdim=True)
        return normalized


def _export(
    module: nn.Module, args: tuple[torch.Tensor, ...], names: Sequence[str], opset: int, tmp: Path
) -> onnx.ModelProto:
    path = tmp / "graph.onnx"
    axes = {name: {0: "batch", 1: "seq"} if name == "input_ids" else {0: "batch"} for name in names}
    axes["embeddings"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings flag Python branches on shapes; they are fixed at export on purpose
        # (the batch-size and sequence-length checks in HF's code), and the parity check
        # afterwards runs other shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(names),
            output_names=["embeddings"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load(str(path))


def _optimize(
    model: onnx.ModelProto, heads: int, hidden: int
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """ORT's CLIP fusions (Attention, LayerNorm, SkipLayerNorm, QuickGelu/Gelu)."""
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level 0: Python fusions only; ORT's own level-1 passes run again at session load.
    optimizer = optimize_model(
        model, model_type="clip", num_heads=heads, hidden_size=hidden, opt_level=0
    )
    stats = optimizer.get_fused_operator_statistics()
    return optimizer.model, {op: int(stats.get(op, 0)) for op in _FUSED_OPS}


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, float32 graph inputs/outputs.

    The L2 norm stays fp32: its sum of squares can pass fp16's 65504 for wide projections.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep = [n.name for n in model.graph.node if n.op_type == "ReduceL2"]
    converted: onnx.ModelProto = convert_float_to_float16(
        model, keep_io_types=True, node_block_list=keep, disable_shape_infer=True
    )
    return converted


def _to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8: MatMul and Attention weights quantized per output channel ahead of time,
    activations per batch at run time (DynamicQuantizeLinear). A CPU format: on a 2-core AVX-512
    VNNI machine the ViT-B/32 vision tower runs 3× faster than fp32 (60.6 vs 20.9 img/s, batch 32).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _copy(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        # The optimizer's fused ops need the import for onnx's shape inference to pass them.
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    with tempfile.TemporaryDirectory(prefix="moderator-int8-") as tmp:
        path = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            model,
            path,
            op_types_to_quantize=["MatMul", "Attention"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            # Outputs of com.microsoft ops have no inferred type; they are all float here.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return onnx.load(str(path))


def _convert(model: onnx.ModelProto, precision: Precision) -> onnx.ModelProto:
    if precision == "fp16":
        return _to_fp16(model)
    if precision == "int8":
        return _to_int8(model)
    return model


def _finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def _save(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
        )
    else:
        onnx.save_model(model, str(path))


# --- parity ---------------------------------------------------------------------------------


def _cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=-1)))


def _run_onnx(path: Path, feeds: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    out = session.run(["embeddings"], {k: v for k, v in feeds.items() if k in wanted})[0]
    return np.asarray(out, np.float32)


def _reference_images(
    ckpt: _Checkpoint, pre: _Preprocess, pixels: NDArray[np.uint8]
) -> NDArray[np.float32]:
    """What PyTorch CLIP gives for these pixels, normalized the processor's way."""
    clip = ckpt.model
    x = torch.from_numpy(pixels).to(torch.float32) * pre.rescale
    x = (x - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=x.permute(0, 3, 1, 2)).pooler_output
        embeds = clip.visual_projection(pooled)
    return np.asarray((embeds / embeds.norm(dim=-1, keepdim=True)).numpy(), np.float32)


def _reference_texts(ckpt: _Checkpoint, texts: Sequence[str]) -> NDArray[np.float32]:
    """HF's own text path: its tokenizer (padding with its pad id) and `text_model`."""
    clip = ckpt.model
    batch = ckpt.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = clip.text_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).pooler_output
        embeds = clip.text_projection(pooled)
    return np.asarray((embeds / embeds.norm(dim=-1, keepdim=True)).numpy(), np.float32)


# --- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tokens:
    bos: int
    eos: int
    pad: int | None
    pooling: Literal["argmax", "first_eos"]
    context_length: int


def _tokens(ckpt: _Checkpoint) -> _Tokens:
    tok, text_config = ckpt.tokenizer, ckpt.model.config.text_config
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if bos is None or eos is None:
        raise ModelError("the tokenizer defines no bos/eos token; CLIP pools at eos")
    config_eos = text_config.eos_token_id
    # HF CLIP: eos_token_id == 2 in the config marks old checkpoints that pool at argmax(ids)
    # (the eos being the largest id); any other value pools at the first eos.
    if config_eos == 2:
        pooling: Literal["argmax", "first_eos"] = "argmax"
    elif config_eos == eos:
        pooling = "first_eos"
    else:
        raise ModelError(
            f"config eos_token_id {config_eos} is not the tokenizer's eos {eos}: "
            "the text tower would pool the wrong token"
        )
    return _Tokens(
        bos=int(bos),
        eos=int(eos),
        pad=tok.pad_token_id,
        pooling=pooling,
        context_length=int(text_config.max_position_embeddings),
    )


def _check_tokenizer(ckpt: _Checkpoint, ours: TextTokenizer, texts: Sequence[str]) -> None:
    """The runtime's `tokenizers`-only encoding must give the HF tokenizer's ids exactly."""
    for text in texts:
        expected = list(ckpt.tokenizer(text)["input_ids"])
        got = ours.ids(text)
        if got != expected:
            raise ModelError(
                f"tokenizer.json does not reproduce the checkpoint's tokenizer on {text!r}: "
                f"{got} vs {expected} (the runtime wraps texts as bos … eos)"
            )


# --- the export -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    name: str
    fused: dict[str, int]  # empty when the plain graph was kept
    note: str | None
    parity: float


def _build_graph(
    name: str,
    plain: onnx.ModelProto,
    *,
    heads: int,
    hidden: int,
    precision: Precision,
    optimize: bool,
    out: Path,
    feeds: dict[str, NDArray[Any]],
    reference: NDArray[np.float32],
    progress: Progress,
) -> _Graph:
    """Optimize and convert `plain`, save it, and keep the first candidate that passes parity."""
    attempts: list[tuple[onnx.ModelProto, dict[str, int]]] = []
    note: str | None = None
    if optimize:
        t0 = time.perf_counter()
        try:
            fused_model, fused = _optimize(_copy(plain), heads, hidden)
        except Exception as exc:  # the optimizer pattern-matches; any failure → plain graph
            note = f"{name}: optimizer failed ({type(exc).__name__}: {exc}); plain graph kept"
            progress(f"  {note}")
        else:
            counts = " ".join(f"{k}={v}" for k, v in fused.items() if v)
            progress(f"  {name}: fused {counts or 'nothing'} ({time.perf_counter() - t0:.1f} s)")
            if not fused["Attention"]:
                note = f"{name}: no Attention node fused"
            attempts.append((fused_model, fused))
    attempts.append((plain, {}))

    path = out / f"{name}.onnx"
    threshold = MIN_COSINE[precision]
    worst = 0.0
    for model, fused in attempts:
        candidate = _convert(model, precision)
        _save(_finalize(candidate), path)
        worst = _cosines(_run_onnx(path, feeds), reference)
        progress(f"  {name}: parity with PyTorch, min cosine {worst:.6f} ({precision})")
        if worst >= threshold:
            return _Graph(name, fused, note, worst)
        if fused:
            note = f"{name}: fused graph missed parity (cosine {worst:.6f}); plain graph kept"
            progress(f"  {note}")
    raise ModelError(
        f"{name}.onnx disagrees with PyTorch: min cosine {worst:.6f} < {threshold} ({precision})"
    )


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def export_clip(
    model: str = DEFAULT_MODEL,
    out: Path = Path("models/clip-vit-base-patch32"),
    precision: Precision = "fp32",
    opset: int = 17,
    optimize: bool = True,
    progress: Progress = print,
    *,
    name: str | None = None,
    fold_mlp_bias: bool | None = None,
) -> Path:
    """Export `model` (hub id or local checkpoint dir) into `out`; returns `out`.

    `name` overrides the model_id recorded in the manifest (default: hub id or dir name).
    `fold_mlp_bias` (default: fp16 only, the GPU format) writes the vision MLPs' fc1 bias into
    the MatMul; False keeps HF's layout, for comparing the two.
    Raises ModelError for a missing/unknown/non-CLIP checkpoint, no network, a graph that
    disagrees with PyTorch, or `fold_mlp_bias=True` with int8.
    """
    if precision not in MIN_COSINE:
        raise ModelError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if fold_mlp_bias and precision == "int8":  # refused before `out` is touched
        raise ModelError("fold_mlp_bias does not apply to int8 exports")
    started = time.perf_counter()
    ckpt = _load(model, progress)
    clip, config = ckpt.model, ckpt.model.config
    pre = _preprocess(ckpt)
    tokens = _tokens(ckpt)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest until every file is final
    for stale in (VISION_NAME, TEXT_NAME):  # side files of an earlier, larger export
        (out / f"{stale}.data").unlink(missing_ok=True)
    ckpt.tokenizer.backend_tokenizer.save(str(out / TOKENIZER_NAME))
    from tokenizers import Tokenizer

    ours = TextTokenizer(
        Tokenizer.from_file(str(out / TOKENIZER_NAME)),
        bos=tokens.bos,
        eos=tokens.eos,
        context_length=tokens.context_length,
    )
    texts = [t for t in _PROBE_TEXTS if ours.count(t) <= tokens.context_length]
    _check_tokenizer(ckpt, ours, texts)

    size = pre.image_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (_PROBE_IMAGES, size, size, 3), dtype=np.uint8)
    ids, _ = ours.encode(texts)

    fold = precision == "fp16" if fold_mlp_bias is None else fold_mlp_bias
    graphs: list[_Graph] = []
    with tempfile.TemporaryDirectory(prefix="moderator-export-") as tmp:
        progress(f"exporting vision graph ({size}×{size}, opset {opset})")
        vision_plain = _export(
            _VisionGraph(clip, pre, fold_mlp_bias=fold).eval(),
            (torch.zeros((2, size, size, 3), dtype=torch.uint8),),
            ["pixels"],
            opset,
            Path(tmp),
        )
        graphs.append(
            _build_graph(
                "vision",
                vision_plain,
                heads=config.vision_config.num_attention_heads,
                hidden=config.vision_config.hidden_size,
                precision=precision,
                optimize=optimize,
                out=out,
                feeds={"pixels": pixels},
                reference=_reference_images(ckpt, pre, pixels),
                progress=progress,
            )
        )
        del vision_plain
        progress(f"exporting text graph (context {tokens.context_length}, opset {opset})")
        trace_ids = torch.full((2, min(8, tokens.context_length)), tokens.eos, dtype=torch.int64)
        text_plain = _export(
            _TextGraph(clip, tokens.pooling, tokens.eos).eval(),
            (trace_ids,),
            ["input_ids"],
            opset,
            Path(tmp),
        )
        graphs.append(
            _build_graph(
                "text",
                text_plain,
                heads=config.text_config.num_attention_heads,
                hidden=config.text_config.hidden_size,
                # int8 is for the image tower, which runs per event; the text tower runs once
                # per policy compile, so it keeps full precision.
                precision="fp32" if precision == "int8" else precision,
                optimize=optimize,
                out=out,
                feeds={"input_ids": ids},
                reference=_reference_texts(ckpt, texts),
                progress=progress,
            )
        )

    files = {
        p.name: file_sha256(p)
        for p in sorted(out.iterdir())
        if p.is_file() and p.name in _written_names(out)
    }
    notes = [g.note for g in graphs if g.note]
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        source=ckpt.source,
        model_id=name or ckpt.model_id,
        embed_dim=int(config.projection_dim),
        image_size=pre.image_size,
        resize_shortest_edge=pre.resize_shortest_edge,
        mean=pre.mean,
        std=pre.std,
        context_length=tokens.context_length,
        bos_token_id=tokens.bos,
        eos_token_id=tokens.eos,
        pad_token_id=tokens.pad,
        eos_pooling=tokens.pooling,
        logit_scale=float(clip.logit_scale.exp().item()),
        precision=precision,
        opset=opset,
        optimized=Optimization(
            applied=any(g.fused for g in graphs),
            fused={g.name: g.fused for g in graphs if g.fused},
            note="; ".join(notes) or None,
            mlp_bias_folded=config.vision_config.num_hidden_layers if fold else 0,
        ),
        parity={g.name: round(g.parity, 7) for g in graphs},
        files=files,
        sha256=model_sha256(files),
        versions={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "moderator": moderator.__version__,
        },
        exported_at=datetime.now(UTC),
    )
    manifest.write(out)
    progress(
        f"wrote {out} ({manifest.model_id}, {precision}, sha256 {manifest.sha256[:12]}…) "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return out


def _written_names(out: Path) -> set[str]:
    """The files this export wrote: graphs, their external data if any, the tokenizer."""
    names = {VISION_NAME, TEXT_NAME, TOKENIZER_NAME}
    names |= {f"{n}.data" for n in (VISION_NAME, TEXT_NAME) if (out / f"{n}.data").is_file()}
    return names


def _main() -> None:  # pragma: no cover - thin CLI for the export wing alone
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-optimize", action="store_true")
    parser.add_argument("--name")
    args = parser.parse_args()
    export_clip(
        args.model,
        args.out,
        precision=args.precision,
        opset=args.opset,
        optimize=not args.no_optimize,
        name=args.name,
    )
    print(json.dumps(json.loads((args.out / MANIFEST_NAME).read_text()), indent=2))


if __name__ == "__main__":  # pragma: no cover
    _main()
