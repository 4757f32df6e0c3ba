"""Export a Hugging Face CLIP checkpoint to the ONNX directory the runtime loads.

    vision.onnx     pixels uint8 NHWC (n, S, S, 3) → embeddings float32 (n, dim), L2-normalized;
                    /255 and mean/std are folded into the patch-embedding weights, which read
                    the NHWC patches directly, so the service ships 4× fewer bytes to the GPU
                    than float NCHW and has no per-model numpy maths.
    text.onnx       input_ids int64 (n, seq) → embeddings float32 (n, dim), L2-normalized.
    tokenizer.json  the checkpoint's fast tokenizer, read with `tokenizers` alone at serve time.
    manifest.json   everything else the runtime needs, and every file's sha256.

One module per step: `checkpoint` loads the checkpoint and reads the settings the runtime must
copy; `towers` rebuilds the two towers for ONNX Runtime and traces them; `convert` fuses and
converts the graphs; `parity` checks each against PyTorch on probe inputs and keeps the first
candidate that passes, so an optimized, fp16 or int8 graph that misses the bar falls back to
the plain graph at the same precision rather than ship, and when that misses too, the export
fails. No manifest is written before every graph has passed. int8 (for CPUs) quantizes the
vision tower only; the text tower stays fp32.
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers

import moderator
from moderator.embed.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TEXT_NAME,
    TOKENIZER_NAME,
    VISION_NAME,
    Manifest,
    Optimization,
    file_sha256,
    model_sha256,
)
from moderator.embed.tokenize import TextTokenizer
from moderator.errors import ModelError
from moderator.export.checkpoint import Progress, load_checkpoint, read_preprocess, read_tokens
from moderator.export.convert import Precision
from moderator.export.parity import (
    MIN_COSINE,
    build_graph,
    check_tokenizer,
    reference_texts,
    torch_image_embeddings,
)
from moderator.export.towers import TextGraph, VisionGraph, trace_to_onnx

__all__ = ["DEFAULT_MODEL", "export_clip"]

DEFAULT_MODEL: Final = "openai/clip-vit-base-patch32"
# Probe texts for tokenizer and parity checks; ones over a model's context are skipped.
_PROBE_TEXTS: Final = (
    "a photo of a cat",
    "A RED circle, on a white background!",
    "x",
    "",
    "an illustration of two dogs playing in the snow next to a small wooden house",
)
_PROBE_IMAGES: Final = 3


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
    ckpt = load_checkpoint(model, progress)
    clip, config = ckpt.model, ckpt.model.config
    pre = read_preprocess(ckpt)
    tokens = read_tokens(ckpt)

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
    check_tokenizer(ckpt, ours, texts)

    size = pre.image_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (_PROBE_IMAGES, size, size, 3), dtype=np.uint8)
    ids, _ = ours.encode(texts)

    fold = precision == "fp16" if fold_mlp_bias is None else fold_mlp_bias
    build = partial(build_graph, optimize=optimize, out=out, progress=progress)
    with tempfile.TemporaryDirectory(prefix="moderator-export-") as tmp:
        progress(f"exporting vision graph ({size}×{size}, opset {opset})")
        example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
        tower = VisionGraph(clip, pre, fold_mlp_bias=fold).eval()
        plain = trace_to_onnx(tower, (example,), ["pixels"], opset, Path(tmp))
        reference = torch_image_embeddings(clip, pixels, pre.mean, pre.std, pre.rescale)
        vision = build(
            "vision", plain, config.vision_config, precision, {"pixels": pixels}, reference
        )
        del plain, tower
        progress(f"exporting text graph (context {tokens.context_length}, opset {opset})")
        trace_ids = torch.full((2, min(8, tokens.context_length)), tokens.eos, dtype=torch.int64)
        text_tower = TextGraph(clip, tokens.pooling, tokens.eos).eval()
        plain = trace_to_onnx(text_tower, (trace_ids,), ["input_ids"], opset, Path(tmp))
        # int8 is for the image tower, which runs per event; the text tower runs once per
        # policy compile, so it keeps full precision.
        text_precision: Precision = "fp32" if precision == "int8" else precision
        reference = reference_texts(ckpt, texts)
        text = build(
            "text", plain, config.text_config, text_precision, {"input_ids": ids}, reference
        )
    graphs = [vision, text]

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
