"""Zero-shot scoring of the demo world, through the Encoder protocol alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moderator.demo import shapes
from moderator.demo.evaluate import accuracy_from_embeddings, zero_shot_accuracy
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.types import Embeddings, Pixels


def _one_hot(indices: list[int], dim: int = 24) -> Embeddings:
    return np.eye(dim, dtype=np.float32)[indices]


def test_perfect_embeddings_score_one_everywhere() -> None:
    labels = list(range(24)) * 2
    result = accuracy_from_embeddings(_one_hot(labels), _one_hot(list(range(24))), labels)
    assert result.overall == 1.0
    assert result.n == 48
    assert set(result.per_class.values()) == {1.0}
    assert set(result.per_class) == {f"{c} {s}" for s, c in shapes.combos()}


def test_per_class_accuracy_counts_each_class_separately() -> None:
    labels = [0, 0, 1, 1]
    predicted = [0, 5, 5, 5]  # red circle: 1 of 2; green circle: 0 of 2
    result = accuracy_from_embeddings(_one_hot(predicted), _one_hot(list(range(24))), labels)
    assert result.overall == 0.25
    assert result.per_class == {"red circle": 0.5, "green circle": 0.0}


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        accuracy_from_embeddings(_one_hot([0, 1]), _one_hot(list(range(24))), [0])


class _FirstPromptEncoder:
    """Sends every image to the first prompt, and checks what it is handed is real PNG."""

    def __init__(self) -> None:
        self.sizes: set[tuple[int, int]] = set()
        self.calls = 0

    model_id = "first-prompt"
    sha256 = "0" * 64
    logit_scale = 1.0
    context_length = 16
    image_size = 64
    preprocess = PreprocessSpec.for_model(64, 64)

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def encode_texts(self, texts: list[str]) -> Embeddings:
        return _one_hot(list(range(len(texts))))

    def encode_pixels(self, pixels: Pixels) -> Embeddings:
        return _one_hot([0] * len(pixels))

    def encode_images(self, images: list[bytes]) -> Embeddings:
        self.calls += 1
        for data in images:
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "PNG"
                self.sizes.add(image.size)
        return _one_hot([0] * len(images))


def test_zero_shot_accuracy_runs_balanced_batches_of_png() -> None:
    encoder = _FirstPromptEncoder()
    result = zero_shot_accuracy(encoder, n=48, seed=4, size=40, batch=10)
    assert encoder.calls == 5  # 10 + 10 + 10 + 10 + 8
    assert encoder.sizes == {(40, 40)}
    # Balanced: exactly 2 of 48 images are red circles, the class everything is sent to.
    assert result.overall == pytest.approx(2 / 48)
    assert result.per_class["red circle"] == 1.0
    assert sum(result.per_class.values()) == 1.0
