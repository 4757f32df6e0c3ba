"""Deterministic stand-ins for a CLIP runtime: real classes implementing `types.Encoder`.

`FakeEncoder` embeds a text as a unit vector seeded by its sha256 (or taken from a table the
test provides, for exact hand-built cosines). An image is a PNG whose `caption` text chunk
names what it shows: its embedding leans towards that caption's text vector by
`caption_weight` (a cosine of about that value), the rest is noise seeded by the bytes, so
unrelated texts score near 0 as in real CLIP, and related ones clearly higher.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from moderator.errors import DecodeError, TextTooLong
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.types import Embeddings, Pixels


def _unit(vector: NDArray[np.float64]) -> NDArray[np.float32]:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _seeded(data: bytes, dim: int) -> NDArray[np.float32]:
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    return _unit(np.random.default_rng(seed).standard_normal(dim))


def make_png(caption: str | None, seed: int = 0, size: int = 8) -> bytes:
    """A tiny PNG whose `caption` chunk FakeEncoder reads; `seed` varies the pixels (and bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    if caption is not None:
        info.add_text("caption", caption)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


class FakeEncoder:
    """Hashed-embedding encoder; `vectors` pins chosen texts to given (normalized) vectors."""

    def __init__(
        self,
        dim: int = 256,
        *,
        vectors: Mapping[str, ArrayLike] | None = None,
        context_length: int = 77,
        logit_scale: float = 100.0,
        caption_weight: float = 0.5,
        name: str = "fake",
    ) -> None:
        self.dim = dim
        self.table = {t: _unit(np.asarray(v, dtype=np.float64)) for t, v in (vectors or {}).items()}
        self._context_length = context_length
        self._logit_scale = logit_scale
        self.caption_weight = caption_weight
        self._sha256 = hashlib.sha256(f"{name}:{dim}".encode()).hexdigest()

    @property
    def model_id(self) -> str:
        return "fake-hash"

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def image_size(self) -> int:
        return 8

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.for_model(8, 8)

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def text_vector(self, text: str) -> NDArray[np.float32]:
        if text in self.table:
            return self.table[text]
        return _seeded(b"text:" + text.encode(), self.dim)

    def encode_texts(self, texts: list[str]) -> Embeddings:
        for text in texts:
            tokens = self.count_tokens(text)
            if tokens > self._context_length:
                raise TextTooLong(text, tokens, self._context_length)
        return np.stack([self.text_vector(t) for t in texts]).reshape(len(texts), self.dim)

    def encode_pixels(self, pixels: Pixels) -> Embeddings:
        return np.stack([_seeded(p.tobytes(), self.dim) for p in pixels]).reshape(-1, self.dim)

    def encode_images(self, images: list[bytes]) -> Embeddings:
        return np.stack([self.image_vector(b) for b in images]).reshape(len(images), self.dim)

    def image_vector(self, data: bytes) -> NDArray[np.float32]:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                caption = image.info.get("caption")
        except (UnidentifiedImageError, OSError) as exc:
            raise DecodeError(f"not an image: {exc}") from exc
        noise = _seeded(b"image:" + data, self.dim)
        if not caption:
            return noise
        parts: Sequence[str] = [p.strip() for p in str(caption).split("|")]
        meaning = _unit(np.sum([self.text_vector(p) for p in parts], axis=0).astype(np.float64))
        w = self.caption_weight
        return _unit(w * meaning + np.sqrt(1 - w * w) * noise)


class CountingEncoder:
    """Wraps an encoder and records what it was asked to embed."""

    def __init__(self, inner: FakeEncoder) -> None:
        self.inner = inner
        self.texts: list[str] = []
        self.images = 0
        self.text_calls = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def sha256(self) -> str:
        return self.inner.sha256

    @property
    def logit_scale(self) -> float:
        return self.inner.logit_scale

    @property
    def context_length(self) -> int:
        return self.inner.context_length

    @property
    def image_size(self) -> int:
        return self.inner.image_size

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.inner.preprocess

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def encode_texts(self, texts: list[str]) -> Embeddings:
        self.text_calls += 1
        self.texts.extend(texts)
        return self.inner.encode_texts(texts)

    def encode_pixels(self, pixels: Pixels) -> Embeddings:
        return self.inner.encode_pixels(pixels)

    def encode_images(self, images: list[bytes]) -> Embeddings:
        self.images += len(images)
        return self.inner.encode_images(images)
