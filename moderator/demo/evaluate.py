"""Zero-shot accuracy on held-out shapes: does a model (trained or exported) know the demo world?

Works on anything with the `Encoder` protocol, so the exported ONNX model is checked through
the same path the service uses (PNG bytes in, decode + preprocess + embed), without torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from moderator.demo import shapes
from moderator.types import Embeddings, Encoder

# Seed of the held-out set. Training draws batches from default_rng([seed, step]), a different
# stream, so these images are never trained on.
EVAL_SEED = 20_240_601


@dataclass(frozen=True)
class ZeroShotResult:
    """Top-1 over all images and per class (keyed "red circle"), as fractions in [0, 1]."""

    overall: float
    per_class: dict[str, float]
    n: int


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def accuracy_from_embeddings(
    image_embeddings: Embeddings, prompt_embeddings: Embeddings, labels: Sequence[int]
) -> ZeroShotResult:
    """Classify each image by cosine against the prompts (rows index-aligned with `combos()`).

    Rows are L2-normalized by contract, so the dot product is the cosine.
    """
    if len(image_embeddings) != len(labels):
        raise ValueError(f"{len(image_embeddings)} embeddings but {len(labels)} labels")
    predicted: NDArray[np.intp] = np.argmax(image_embeddings @ prompt_embeddings.T, axis=1)
    truth = np.asarray(labels, dtype=np.intp)
    correct = predicted == truth
    per_class: dict[str, float] = {}
    for index, (shape, color) in enumerate(shapes.combos()):
        mask = truth == index
        if mask.any():
            per_class[f"{color} {shape}"] = float(correct[mask].mean())
    overall = float(correct.mean()) if len(correct) else 0.0
    return ZeroShotResult(overall=overall, per_class=per_class, n=len(correct))


def zero_shot_accuracy(
    encoder: Encoder, n: int = 480, seed: int = EVAL_SEED, size: int = 224, batch: int = 64
) -> ZeroShotResult:
    """Held-out top-1 of `encoder` on `n` fresh images against the 24 `class_prompts()`."""
    index = {combo: i for i, combo in enumerate(shapes.combos())}
    prompts = encoder.encode_texts(shapes.class_prompts())
    chunks: list[Embeddings] = []
    labels: list[int] = []
    pending: list[bytes] = []
    for sample in shapes.generate(n, seed, size=size):
        pending.append(to_png(sample.image))
        labels.append(index[(sample.shape, sample.color)])
        if len(pending) == batch:
            chunks.append(encoder.encode_images(pending))
            pending = []
    if pending:
        chunks.append(encoder.encode_images(pending))
    dim = prompts.shape[1]
    images = np.concatenate(chunks) if chunks else np.empty((0, dim), np.float32)
    return accuracy_from_embeddings(images, prompts, labels)
