"""Shapes shared along the data path, and the Protocols stages depend on instead of classes.

Dependencies point one way (events → acquire → decode → batch → embed → score → publish);
a later stage names an earlier one's data through these types, never its implementation.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from moderator.pipeline.decode.cpu import PreprocessSpec

Embeddings = NDArray[np.float32]
"""Rows are L2-normalized float32 embeddings, shape (n, dim)."""

Pixels = NDArray[np.uint8]
"""Model-ready images, uint8 NHWC (n, size, size, 3); normalization happens inside the graph."""


AttentionKernel = Literal["efficient", "flash", "cudnn", "auto"]
"""The CUDA provider's fused attention kernel; "auto" leaves the choice to ONNX Runtime."""

DEFAULT_ATTENTION: AttentionKernel = "efficient"
"""What `serve` and the benches use unless told otherwise (measured: see `load_model`)."""


def content_key(data: str | bytes) -> str:
    """sha256 hex of a text (UTF-8) or of raw image bytes: an image's identity in verdicts,
    cache keys and the embeddings topic, computed wherever the bytes are first whole."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def buckets(max_batch: int) -> list[int]:
    """Batch sizes a GPU stage prepares for (a graph, a resize session): powers of two from 1
    up to the first one holding `max_batch`. A batch of n runs at the smallest that holds it."""
    return [1 << k for k in range((max_batch - 1).bit_length() + 1)]


class Decision(StrEnum):
    """A verdict's outcome, strongest first when compared by `Decision.rank`."""

    FLAG = "flag"
    REVIEW = "review"
    ALLOW = "allow"

    @property
    def rank(self) -> int:
        return _DECISION_RANK[self]


_DECISION_RANK = {Decision.ALLOW: 0, Decision.REVIEW: 1, Decision.FLAG: 2}


class Encoder(Protocol):
    """What policy compilation and scoring need from a CLIP runtime."""

    @property
    def model_id(self) -> str: ...

    @property
    def sha256(self) -> str:
        """Content hash of the model; part of cache keys and policy versions."""
        ...

    @property
    def logit_scale(self) -> float: ...

    @property
    def context_length(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    @property
    def preprocess(self) -> PreprocessSpec:
        """How images become pixels for this model: part of image cache keys."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens `text` needs including start/end markers (compare with context_length)."""
        ...

    def encode_texts(self, texts: list[str]) -> Embeddings:
        """Raises TextTooLong rather than truncating."""
        ...

    def encode_pixels(self, pixels: Pixels) -> Embeddings: ...

    def encode_images(self, images: list[bytes]) -> Embeddings:
        """Decode + preprocess + embed; raises the typed DecodeError family per bad image."""
        ...
