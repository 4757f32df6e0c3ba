"""Where compiled text and reference-image embeddings are remembered between compiles.

A policy reload usually changes one prompt; embedding only what changed keeps reloads fast on a
busy GPU. Entries are keyed by content: the namespace names the kind and the model
(`txt:<model sha256>`; `img:<model sha256>:<preprocessing digest>`, see `image_namespace`) and
the key is the sha256 of the text or image bytes, so a new model, other preprocessing or an
edited prompt can never be served a stale vector.

A cache is told the dimension of what it stores (`dim`); entries are then checked on the way
out (`embedding_problem`): whatever another writer, a truncated write or a corrupted store left
there reads as a miss, never as an embedding and never as an error.

`moderator.cache.redis.RedisEmbeddingCache` is the shared implementation used in production;
`moderator.cache.memory.MemoryEmbeddingCache` serves tests and one-shot CLI runs.
"""

from __future__ import annotations

import hashlib
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from moderator.pipeline.decode.cpu import PREPROCESS_VERSION, PreprocessSpec
from moderator.types import content_key

__all__ = [
    "EmbeddingCache",
    "content_key",
    "embedding_problem",
    "image_namespace",
    "namespace",
]

TEXT_KIND = "txt"
IMAGE_KIND = "img"
UNIT_NORM_TOLERANCE: Final = 1e-2
"""How far a cached embedding's L2 norm may be from 1: fp16 rounding moves it by about 1e-3."""
_PREPROCESS_HEX = 12


class EmbeddingCache(Protocol):
    """Content-addressed vector store. Implementations never raise: trouble reads as a miss."""

    async def get_many(
        self, namespace: str, keys: list[str]
    ) -> list[NDArray[np.float32] | None]: ...

    async def set_many(
        self, namespace: str, items: dict[str, NDArray[np.float32]], ttl_s: int
    ) -> None: ...


def namespace(kind: str, model_sha256: str) -> str:
    """`txt:<sha>` / `img:<sha>`: a model's vectors never mix with another model's."""
    return f"{kind}:{model_sha256}"


def image_namespace(model_sha256: str, spec: PreprocessSpec) -> str:
    """`img:<sha>:<digest>`: an image's vector depends on the pixels the model saw, so the
    preprocessing that made them (version, crop size, resize rule) is part of the namespace.

    Byte and pixel limits and allowed formats are left out: they decide whether an image is
    refused, never what an accepted one becomes.
    """
    identity = f"v{PREPROCESS_VERSION}:size={spec.image_size}:edge={spec.resize_shortest_edge}"
    digest = hashlib.sha256(identity.encode("ascii")).hexdigest()[:_PREPROCESS_HEX]
    return f"{IMAGE_KIND}:{model_sha256}:{digest}"


def embedding_problem(vector: NDArray[np.float32], dim: int | None) -> str | None:
    """Why `vector` cannot be served as a cached embedding, or None when it can.

    With `dim` it must be a unit vector of exactly `dim` finite values (model embeddings are
    L2-normalized); without it (tests, tools) any non-empty finite vector passes.
    """
    if vector.ndim != 1 or vector.shape[0] == 0:
        return f"has shape {vector.shape}, not a vector"
    if dim is not None and vector.shape[0] != dim:
        return f"has {vector.shape[0]} values, expected {dim}"
    if not np.isfinite(vector).all():
        return "holds NaN or Inf"
    if dim is not None:
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        if not abs(norm - 1.0) < UNIT_NORM_TOLERANCE:
            return f"has norm {norm:.4g}, not 1"
    return None
