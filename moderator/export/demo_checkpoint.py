"""The demo model's PyTorch checkpoint, rebuilt from the ONNX files shipped in the package.

The benches compare the service with a naive peer that runs HF `CLIPModel`, which needs the
checkpoint the demo was exported from; only the ONNX files are committed. Every weight of an
fp32 export is still an initializer of its graphs, so the checkpoint can be read back:

- each initializer is named by the graph node that consumes it, never by its own name (the
  exporter deduplicates equal tensors, so one initializer may feed several modules);
- ORT's fused `Attention` holds q, k and v as one (width, 3·width) matrix: split in three;
- MatMul weights are HF's Linear weights transposed; biases sit on an Add or on the
  `SkipLayerNormalization` that absorbed it;
- exports that fold the pixel normalization into the patch embedding (`towers.VisionGraph`) are
  unfolded with the manifest's mean and std. The class token and position 0 appear there only
  as their sum, so the class embedding carries it and position 0 is zero: the same function.

The architecture comes from the graphs and the manifest, not from the training code, so the
rebuild fits whatever the ONNX files hold. The result is checked against ONNX Runtime before it
is kept. Equal files give a byte-identical `model.safetensors`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx import numpy_helper
from tokenizers import Tokenizer

from moderator.embed.manifest import (
    TEXT_NAME,
    TOKENIZER_NAME,
    VISION_NAME,
    Manifest,
    read_manifest,
)
from moderator.embed.paths import DEMO_DIR
from moderator.embed.tokenize import TextTokenizer
from moderator.errors import ModelError
from moderator.export.parity import min_cosine, torch_image_embeddings

__all__ = [
    "MIN_COSINE",
    "REBUILD_REVISION",
    "clip_from_onnx",
    "demo_checkpoint",
    "demo_checkpoint_cache",
    "rebuild_checkpoint",
    "torch_text_embeddings",
]

# Part of the cache directory's name: bump it when the rebuilt files change.
REBUILD_REVISION: Final = 1
# Lowest cosine (rebuilt PyTorch vs the ONNX graphs) accepted on the probe inputs: fp32 on
# both sides, so only op order and fused kernels differ.
MIN_COSINE: Final = 0.999
MARKER: Final = "rebuilt.json"
_PROBE_TEXTS: Final = ("a photo of a red circle", "x", "", "the star is blue")
_PROBE_IMAGES: Final = 4
_QUICK_GELU_ALPHA: Final = 1.702
# "/vision/encoder/layers.0/mlp/fc1/MatMul_output_0" → "encoder/layers.0/mlp/fc1"
_MODULE = re.compile(r"^/(?:vision/|text/)?(?P<path>.+)/[A-Za-z]+(?:_\d+)?_output_0$")

Progress = Callable[[str], None]


def demo_checkpoint_cache() -> Path:
    """`$XDG_CACHE_HOME/moderator/demo-hf` (default ~/.cache): where rebuilds are kept."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moderator" / "demo-hf"


def demo_checkpoint(
    onnx_dir: Path = DEMO_DIR, *, cache: Path | None = None, progress: Progress = print
) -> Path:
    """The checkpoint for the export in `onnx_dir`, rebuilt into the cache on first use.

    The directory is named after the manifest's model hash, so a changed demo gets its own.
    """
    manifest = read_manifest(onnx_dir)
    base = cache or demo_checkpoint_cache()
    target = base / f"{manifest.sha256[:16]}-r{REBUILD_REVISION}"
    if (target / MARKER).is_file():
        return target
    progress(f"rebuilding the PyTorch checkpoint of {manifest.model_id} into {target}")
    base.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: an interrupted rebuild never looks like a checkpoint.
    partial = base / f"{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        rebuild_checkpoint(onnx_dir, partial)
        if not (target / MARKER).is_file():  # a concurrent rebuild may have finished first
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
    except OSError:
        if not (target / MARKER).is_file():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def rebuild_checkpoint(onnx_dir: Path, out: Path) -> Path:
    """Write a `save_pretrained` directory (model, tokenizer, image processor) for the export
    in `onnx_dir`; ModelError when the graphs cannot be mapped or miss parity."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    manifest = read_manifest(onnx_dir)
    clip = clip_from_onnx(onnx_dir)
    worst = _parity(clip, onnx_dir)
    if min(worst.values()) < MIN_COSINE:
        raise ModelError(f"rebuilt checkpoint disagrees with the ONNX graphs: {worst}")
    out.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(out)

    backend = Tokenizer.from_file(str(onnx_dir / TOKENIZER_NAME))
    unk = json.loads((onnx_dir / TOKENIZER_NAME).read_text())["model"].get("unk_token")
    pad = manifest.pad_token_id
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=backend.id_to_token(manifest.bos_token_id),
        eos_token=backend.id_to_token(manifest.eos_token_id),
        pad_token=backend.id_to_token(pad) if pad is not None else None,
        unk_token=unk,
        model_max_length=manifest.context_length,
    )
    tokenizer.save_pretrained(out)
    _image_processor(manifest).save_pretrained(out)
    marker = {
        "source_sha256": manifest.sha256,
        "model_id": manifest.model_id,
        "revision": REBUILD_REVISION,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out


def _image_processor(manifest: Manifest) -> Any:
    try:  # transformers ≥ 5 names the Pillow backend; it needs no torchvision
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil as Processor,
        )
    except ImportError:  # pragma: no cover - depends on the installed transformers
        from transformers import CLIPImageProcessor as Processor  # type: ignore[assignment]
    return Processor(
        size={"shortest_edge": manifest.resize_shortest_edge},
        crop_size={"height": manifest.image_size, "width": manifest.image_size},
        image_mean=list(manifest.mean),
        image_std=list(manifest.std),
    )


# --- reading the graphs ---------------------------------------------------------------------


@dataclass
class _Tower:
    """One graph's weights under HF module names, and what the graph says of its shape."""

    weights: dict[str, NDArray[np.float32]] = field(default_factory=dict)
    heads: int = 0
    eps: float = 1e-5
    activation: str = ""
    used: set[str] = field(default_factory=set)

    def put(self, key: str, value: NDArray[Any]) -> None:
        if key in self.weights:
            raise ModelError(f"two graph nodes give weights for {key}")
        self.weights[key] = np.ascontiguousarray(value, dtype=np.float32)


def _module(tensor: str) -> str | None:
    match = _MODULE.match(tensor)
    return match["path"].replace("/", ".") if match else None


def _read(file: Path) -> _Tower:
    graph = onnx.load(str(file)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output if out}
    tower = _Tower()

    def init(name: str) -> NDArray[Any] | None:
        """The float weight `name` names, marked as taken; None for anything else."""
        if name in inits and inits[name].dtype.kind == "f":
            tower.used.add(name)
            return inits[name]
        return None

    def linear(tensor: str) -> str | None:
        """The HF module of the MatMul that produced `tensor`, if one did."""
        node = producer.get(tensor)
        if node is None or node.op_type != "MatMul" or node.input[1] not in inits:
            return None
        return _module(node.output[0]) or "patch"

    for node in graph.node:
        path, attrs = _module(node.output[0]), _attributes(node)
        op, args = node.op_type, [init(name) for name in node.input]
        if op == "MatMul" and args[1] is not None:
            tower.put(f"{path or 'patch'}.weight", args[1].T)
        elif op == "Add" and sum(a is not None for a in args) == 1:
            at = 0 if args[0] is not None else 1
            value, other = args[at], node.input[1 - at]
            assert value is not None
            source = producer.get(other)
            if source is not None and source.op_type == "Pad":  # the folded positions
                tower.put("positions", np.asarray(value).reshape(-1, value.shape[-1]))
            elif (module := linear(other)) is not None:
                tower.put(f"{module}.bias", value)
            else:
                raise ModelError(f"{path}: an Add of weights after {other} matches no module")
        elif op in ("LayerNormalization", "SkipLayerNormalization"):
            weight_at = 1 if op == "LayerNormalization" else 2
            gamma, beta = args[weight_at], args[weight_at + 1]
            if gamma is None or beta is None or path is None:
                raise ModelError(f"{node.name}: a layer norm without weights")
            tower.put(f"{path}.weight", gamma)
            tower.put(f"{path}.bias", beta)
            tower.eps = float(f"{float(attrs.get('epsilon', 1e-5)):.6g}")
            if op == "SkipLayerNormalization" and len(args) > 4 and args[4] is not None:
                owner = linear(node.input[0]) or linear(node.input[1])
                if owner is None:
                    raise ModelError(f"{path}: a skip layer norm's bias matches no module")
                tower.put(f"{owner}.bias", args[4])
        elif op == "Attention":
            _split_qkv(tower, path, node, args, attrs)
        elif op == "Conv" and args[1] is not None:
            if len(args) > 2 and args[2] is not None:
                raise ModelError("the patch convolution has a bias; CLIP's has none")
            tower.put(f"{path}.weight", args[1])
        elif op == "Gather" and args[0] is not None:  # token and position embeddings
            tower.put(f"{path}.weight", args[0])
        elif op == "Expand" and args[0] is not None:  # the class token
            tower.put("embeddings.class_embedding", args[0])
        elif op == "QuickGelu":
            if not math.isclose(float(attrs.get("alpha", 1.0)), _QUICK_GELU_ALPHA, rel_tol=1e-6):
                raise ModelError(f"QuickGelu alpha {attrs.get('alpha')}, not CLIP's 1.702")
            tower.activation = "quick_gelu"
        elif op in ("Gelu", "FastGelu", "BiasGelu"):
            raise ModelError(f"{op}: only quick_gelu towers are rebuilt")
    floats = {n for n, v in inits.items() if v.dtype.kind == "f" and v.size > 1}
    if unused := sorted(floats - tower.used):
        raise ModelError(f"{file.name}: weights no module takes: {unused[:5]}")
    return tower


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _split_qkv(
    tower: _Tower,
    path: str | None,
    node: onnx.NodeProto,
    args: list[NDArray[Any] | None],
    attrs: dict[str, Any],
) -> None:
    """ORT's Attention: [Wq | Wk | Wv] and [bq | bk | bv] over the input width."""
    weight, bias = args[1], args[2] if len(args) > 2 else None
    if weight is None or bias is None or path is None:
        raise ModelError(f"{node.name}: an Attention node without its weights")
    heads, width = int(attrs["num_heads"]), weight.shape[1] // 3
    if attrs.get("qkv_hidden_sizes") not in (None, [width] * 3):
        raise ModelError(f"{node.name}: unequal q/k/v sizes {attrs['qkv_hidden_sizes']}")
    scale = attrs.get("scale")
    if scale is not None and not math.isclose(scale, (width // heads) ** -0.5, rel_tol=1e-6):
        raise ModelError(f"{node.name}: attention scale {scale} is not 1/sqrt(head size)")
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        part = slice(i * width, (i + 1) * width)
        tower.put(f"{path}.{name}.weight", weight[:, part].T)
        tower.put(f"{path}.{name}.bias", bias[part])
    tower.heads = heads


def _unfold_patches(tower: _Tower, manifest: Manifest) -> None:
    """Undo `VisionGraph`'s folding: NHWC patch MatMul → conv, positions → HF's three."""
    folded = tower.weights.pop("patch.weight", None)
    positions = tower.weights.pop("positions", None)
    if folded is None and positions is None:
        return
    if folded is None or positions is None:
        raise ModelError("vision.onnx has a folded patch embedding without its positions")
    dim, rows = folded.shape  # (D, P·P·3) after the transpose of `put`
    patch = math.isqrt(rows // 3)
    scale = np.asarray(manifest.std, np.float64) * 255.0
    offset = np.asarray(manifest.mean, np.float64) * 255.0
    per_pixel = folded.astype(np.float64).reshape(dim, patch, patch, 3)  # (D, row, col, channel)
    conv = (per_pixel * scale).transpose(0, 3, 1, 2)  # (D, 3, P, P)
    bias = -(per_pixel * offset).sum(axis=(1, 2, 3))
    grid = positions.astype(np.float64).copy()
    grid[1:] -= bias
    tower.put("embeddings.patch_embedding.weight", conv)
    tower.put("embeddings.class_embedding", grid[0])
    grid[0] = 0.0
    tower.put("embeddings.position_embedding.weight", grid)


def clip_from_onnx(onnx_dir: Path) -> Any:
    """A `transformers.CLIPModel` holding the weights of the fp32 export in `onnx_dir`."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    manifest = read_manifest(onnx_dir)
    if manifest.precision != "fp32" or manifest.optimized.mlp_bias_folded:
        raise ModelError(f"only unfolded fp32 exports can be rebuilt, not {manifest.precision}")
    vision, text = _read(onnx_dir / VISION_NAME), _read(onnx_dir / TEXT_NAME)
    _unfold_patches(vision, manifest)
    v, t = vision.weights, text.weights
    try:
        conv, projection = v["embeddings.patch_embedding.weight"], v["projection.weight"]
        vision_config = CLIPVisionConfig(
            image_size=manifest.image_size,
            patch_size=conv.shape[-1],
            hidden_size=conv.shape[0],
            intermediate_size=v["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=_layers(v),
            num_attention_heads=vision.heads,
            projection_dim=projection.shape[0],
            hidden_act=vision.activation,
            layer_norm_eps=vision.eps,
        )
        text_config = CLIPTextConfig(
            vocab_size=t["embeddings.token_embedding.weight"].shape[0],
            hidden_size=t["embeddings.token_embedding.weight"].shape[1],
            intermediate_size=t["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=_layers(t),
            num_attention_heads=text.heads,
            max_position_embeddings=t["embeddings.position_embedding.weight"].shape[0],
            projection_dim=t["projection.weight"].shape[0],
            hidden_act=text.activation,
            layer_norm_eps=text.eps,
            bos_token_id=manifest.bos_token_id,
            # HF pools at argmax(ids) when the config's eos is 2, else at the first eos.
            eos_token_id=2 if manifest.eos_pooling == "argmax" else manifest.eos_token_id,
            pad_token_id=manifest.pad_token_id,
        )
    except KeyError as exc:
        raise ModelError(f"the ONNX graphs lack a CLIP weight: {exc}") from exc
    config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=projection.shape[0],
    )
    state = {_hf_name("vision_model", k): w for k, w in v.items()}
    state |= {_hf_name("text_model", k): w for k, w in t.items()}
    state["logit_scale"] = np.asarray(math.log(manifest.logit_scale), np.float32)
    clip: Any = CLIPModel(config)
    clip.eval()
    expected = set(clip.state_dict())
    if missing := sorted(expected - set(state)):
        raise ModelError(f"the ONNX graphs give no weights for {missing[:5]}")
    if extra := sorted(set(state) - expected):
        raise ModelError(f"weights for modules CLIPModel lacks: {extra[:5]}")
    tensors = {k: torch.tensor(np.asarray(w, np.float32)) for k, w in state.items()}
    try:
        clip.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # shapes that contradict the derived config
        raise ModelError(f"the ONNX weights do not fit a CLIPModel: {exc}") from exc
    return clip


def _layers(weights: dict[str, NDArray[np.float32]]) -> int:
    found = {int(m[1]) for k in weights if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    if found != set(range(len(found))) or not found:
        raise ModelError(f"encoder layers {sorted(found)}: expected 0..n-1")
    return len(found)


def _hf_name(tower: str, key: str) -> str:
    if key == "projection.weight":
        return "visual_projection.weight" if tower == "vision_model" else "text_projection.weight"
    return f"{tower}.{key}"


# --- parity ---------------------------------------------------------------------------------


def _parity(clip: Any, onnx_dir: Path) -> dict[str, float]:
    """Lowest cosine of the rebuilt model vs ONNX Runtime, image and text, on probe inputs."""
    from moderator.embed import load_model

    runtime = load_model(onnx_dir, providers=["cpu"], verify=False)
    manifest, size = runtime.manifest, runtime.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (_PROBE_IMAGES, size, size, 3), np.uint8)
    texts = [t for t in _PROBE_TEXTS if runtime.count_tokens(t) <= runtime.context_length]
    ids, _ = TextTokenizer.from_dir(onnx_dir, manifest).encode(texts)
    images = torch_image_embeddings(clip, pixels, manifest.mean, manifest.std)
    return {
        "vision": min_cosine(images, runtime.encode_pixels(pixels)),
        "text": min_cosine(torch_text_embeddings(clip, ids), runtime.encode_texts(texts)),
    }


def torch_text_embeddings(clip: Any, ids: NDArray[np.int64]) -> NDArray[np.float32]:
    """HF CLIP's text tower and projection on padded token ids."""
    with torch.no_grad():
        pooled = clip.text_model(input_ids=torch.from_numpy(ids)).pooler_output
        embeds = clip.text_projection(pooled)
    return np.asarray(torch.nn.functional.normalize(embeds, dim=-1).numpy(), np.float32)
