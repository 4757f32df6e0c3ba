"""Every exported graph is checked against PyTorch before it ships.

`build_graph` tries the optimized graph first and the plain one after, at the requested
precision, and keeps the first whose embeddings of the probe inputs reach `MIN_COSINE` against
PyTorch's; when none does, the export fails. `check_tokenizer` holds the runtime's
`tokenizers`-only encoding to the checkpoint's own tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from moderator.embed.tokenize import TextTokenizer
from moderator.errors import ModelError
from moderator.export.checkpoint import Checkpoint, Progress
from moderator.export.convert import Precision, convert, copy_model, finalize, fuse, save

__all__ = [
    "MIN_COSINE",
    "Graph",
    "build_graph",
    "check_tokenizer",
    "min_cosine",
    "reference_texts",
    "run_onnx",
    "torch_image_embeddings",
]

# Lowest cosine (ONNX vs PyTorch) accepted on the probe inputs. fp16 keeps ~3 significant
# digits per op, so 1e-3 is its budget; fp32 differs only by op order and fused kernels;
# int8 rounds every activation entering a matrix product to 256 levels (random-weight
# ViT-B/32: 0.9998 with per-channel weights).
MIN_COSINE: Final[dict[str, float]] = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}


def min_cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """The lowest cosine between matching rows of `a` and `b`, computed in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return float(cos.min())


def run_onnx(path: Path, feeds: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    out = session.run(["embeddings"], {k: v for k, v in feeds.items() if k in wanted})[0]
    return np.asarray(out, np.float32)


def torch_image_embeddings(
    clip: Any,
    pixels: NDArray[np.uint8],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    rescale: float = 1 / 255,
) -> NDArray[np.float32]:
    """HF CLIP on (n, S, S, 3) uint8 pixels, normalized the image processor's way."""
    x = torch.from_numpy(pixels).to(torch.float32) * rescale
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=x.permute(0, 3, 1, 2)).pooler_output
        embeds = clip.visual_projection(pooled)
    return np.asarray(torch.nn.functional.normalize(embeds, dim=-1).numpy(), np.float32)


def reference_texts(ckpt: Checkpoint, texts: Sequence[str]) -> NDArray[np.float32]:
    """HF's own text path: its tokenizer (padding with its pad id) and `text_model`."""
    clip = ckpt.model
    batch = ckpt.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = clip.text_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).pooler_output
        embeds = clip.text_projection(pooled)
    return np.asarray((embeds / embeds.norm(dim=-1, keepdim=True)).numpy(), np.float32)


def check_tokenizer(ckpt: Checkpoint, ours: TextTokenizer, texts: Sequence[str]) -> None:
    """The runtime's `tokenizers`-only encoding must give the HF tokenizer's ids exactly."""
    for text in texts:
        expected = list(ckpt.tokenizer(text)["input_ids"])
        got = ours.ids(text)
        if got != expected:
            raise ModelError(
                f"tokenizer.json does not reproduce the checkpoint's tokenizer on {text!r}: "
                f"{got} vs {expected} (the runtime wraps texts as bos … eos)"
            )


@dataclass(frozen=True)
class Graph:
    name: str
    fused: dict[str, int]  # empty when the plain graph was kept
    note: str | None
    parity: float


def build_graph(
    name: str,
    plain: onnx.ModelProto,
    tower: Any,
    precision: Precision,
    feeds: dict[str, NDArray[Any]],
    reference: NDArray[np.float32],
    *,
    optimize: bool,
    out: Path,
    progress: Progress,
) -> Graph:
    """Optimize and convert `plain`, save it, and keep the first candidate that passes parity.

    `tower` is the HF config of the tower `plain` was traced from (its heads and width guide
    the fusions); `reference` is what PyTorch gives for `feeds`.
    """
    attempts: list[tuple[onnx.ModelProto, dict[str, int]]] = []
    note: str | None = None
    if optimize:
        t0 = time.perf_counter()
        try:
            fused_model, fused = fuse(
                copy_model(plain), tower.num_attention_heads, tower.hidden_size
            )
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
        candidate = convert(model, precision)
        save(finalize(candidate), path)
        worst = min_cosine(run_onnx(path, feeds), reference)
        progress(f"  {name}: parity with PyTorch, min cosine {worst:.6f} ({precision})")
        if worst >= threshold:
            return Graph(name, fused, note, worst)
        if fused:
            note = f"{name}: fused graph missed parity (cosine {worst:.6f}); plain graph kept"
            progress(f"  {note}")
    raise ModelError(
        f"{name}.onnx disagrees with PyTorch: min cosine {worst:.6f} < {threshold} ({precision})"
    )
