"""Turn a loaded PolicySet into a CompiledPolicy: embed every text and reference image once.

Embeddings are looked up in the EmbeddingCache first (content-addressed, see cache.py), so a
reload that edits one prompt sends only that prompt to the model. The model runs in a worker
thread (`asyncio.to_thread`): compiling must not stall the event loop that is consuming Kafka.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from moderator.cache.keys import (
    TEXT_KIND,
    EmbeddingCache,
    content_key,
    image_namespace,
    namespace,
)
from moderator.errors import ModeratorError, PolicyError
from moderator.policy.load import PolicySet
from moderator.policy.score import CompiledPolicy
from moderator.types import Embeddings, Encoder

# Texts/images per encoder call: the runtime passes a call to ONNX Runtime whole, and engines
# built for a maximum batch (TensorRT profiles; `load_model(max_batch=64)` by default) refuse
# larger ones. A policy's few hundred prompts still take only a handful of calls.
ENCODE_CHUNK = 64
# Matches the default of `redis.text_ttl_s`; policy embeddings change only with the policy.
DEFAULT_TTL_S = 30 * 24 * 3600
VERSION_HEX = 12

_Item = TypeVar("_Item", str, bytes)


async def compile_policy(
    policies: PolicySet,
    encoder: Encoder,
    cache: EmbeddingCache | None = None,
    *,
    ttl_s: int = DEFAULT_TTL_S,
) -> CompiledPolicy:
    """Embed the policy's texts and example images (cache first) and lay out the score arrays.

    Raises PolicyError for a text over the model's context length or an unreadable example.
    """
    concepts = policies.concepts
    origins: dict[str, str] = {}
    for c in concepts:
        for text in (*c.prompts, *c.counter_prompts, *c.benign):
            origins.setdefault(text, c.origin)
    texts = list(origins)
    _check_lengths(texts, origins, encoder)
    text_embeddings = await _embed(
        namespace(TEXT_KIND, encoder.sha256),
        texts,
        [content_key(t) for t in texts],
        encoder.encode_texts,
        cache,
        ttl_s,
    )
    images, example_rows, example_hashes, where = await _read_examples(policies)
    keys = list(dict.fromkeys(example_hashes))
    unique = dict(zip(example_hashes, images, strict=True))

    def encode_examples(batch: list[bytes]) -> Embeddings:
        try:
            return encoder.encode_images(batch)
        except ModeratorError:
            pass  # find out which image it was, to name it
        rows = []
        for data in batch:
            try:
                rows.append(encoder.encode_images([data])[0])
            except ModeratorError as exc:
                raise PolicyError(
                    [f"{where[content_key(data)]}: not a usable image ({exc})"]
                ) from exc
        return np.stack(rows)

    example_unique = await _embed(
        image_namespace(encoder.sha256, encoder.preprocess),
        [unique[k] for k in keys],
        keys,
        encode_examples,
        cache,
        ttl_s,
    )
    position = {k: i for i, k in enumerate(keys)}
    example_matrix = (
        example_unique[[position[h] for h in example_hashes]]
        if example_hashes
        else np.zeros((0, text_embeddings.shape[1]), dtype=np.float32)
    )
    digests = _per_concept(example_rows, example_hashes)
    return CompiledPolicy.assemble(
        version=policy_version(policies, digests, encoder.sha256),
        name=policies.name,
        model_sha256=encoder.sha256,
        logit_scale=encoder.logit_scale,
        concepts=concepts,
        texts=texts,
        text_embeddings=text_embeddings,
        example_embeddings=example_matrix,
        example_rows=example_rows,
    )


def policy_version(
    policies: PolicySet, example_digests: Sequence[Sequence[str]], model_sha256: str
) -> str:
    """`<content>-<model>` in short hex: equal exactly when scoring would be identical.

    The content part hashes the canonical JSON of the resolved concepts (sorted by id, defaults
    applied, reference images by content), so comments, key order, file names and moving a
    concept between files do not change it; the model part tells a model swap apart.
    """
    canonical = sorted(
        (
            {**c.canonical(), "examples": sorted(d)}
            for c, d in zip(policies.concepts, example_digests, strict=True)
        ),
        key=lambda item: str(item["id"]),
    )
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    content = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{content[:VERSION_HEX]}-{model_sha256[:8]}"


def _check_lengths(texts: list[str], origins: dict[str, str], encoder: Encoder) -> None:
    limit = encoder.context_length
    problems = []
    for text in texts:
        count = encoder.count_tokens(text)
        if count > limit:
            problems.append(
                f"{origins[text]}: `{text[:60]}` has {count} tokens, the model reads at most "
                f"{limit} (shorten it; prompts are never cut silently)"
            )
    if problems:
        raise PolicyError(problems)


async def _embed(
    space: str,
    items: list[_Item],
    keys: list[str],
    encode: Callable[[list[_Item]], Embeddings],
    cache: EmbeddingCache | None,
    ttl_s: int,
) -> NDArray[np.float32]:
    """Rows for `items`: cached where possible, the rest encoded in a thread and cached."""
    found: list[NDArray[np.float32] | None] = [None] * len(keys)
    if cache is not None and keys:
        found = await cache.get_many(space, keys)
    dim = next((v.shape[-1] for v in found if v is not None), None)
    missing = [i for i, v in enumerate(found) if v is None or v.ndim != 1 or v.shape[0] != dim]
    fresh: dict[str, NDArray[np.float32]] = {}
    for start in range(0, len(missing), ENCODE_CHUNK):
        chunk = missing[start : start + ENCODE_CHUNK]
        vectors = await asyncio.to_thread(encode, [items[i] for i in chunk])
        for i, vector in zip(chunk, vectors, strict=True):
            found[i] = fresh[keys[i]] = np.asarray(vector, dtype=np.float32)
    if fresh and cache is not None:
        await cache.set_many(space, fresh, ttl_s)
    if not items:
        return np.zeros((0, 0), dtype=np.float32)
    matrix = np.stack([v for v in found if v is not None]).astype(np.float32)
    # Rows are promised unit-length; renormalizing guards against a cache returning a vector
    # written by something else, and costs nothing at this size.
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


async def _read_examples(
    policies: PolicySet,
) -> tuple[list[bytes], list[list[int]], list[str], dict[str, str]]:
    """Example bytes in concept order, each concept's rows, each row's sha256, and where each
    sha256 was named (`file:line: example PATH`) for error messages."""
    where: dict[str, str] = {}
    images: list[bytes] = []
    rows: list[list[int]] = []
    hashes: list[str] = []
    problems: list[str] = []
    for c in policies.concepts:
        rows.append([])
        for path in c.examples:
            try:
                data = await asyncio.to_thread(Path(path).read_bytes)
            except OSError as exc:
                problems.append(f"{c.origin}: example {path}: cannot read ({exc.strerror})")
                continue
            rows[-1].append(len(images))
            images.append(data)
            hashes.append(content_key(data))
            where.setdefault(hashes[-1], f"{c.origin}: example {path}")
    if problems:
        raise PolicyError(problems)
    return images, rows, hashes, where


def _per_concept(rows: list[list[int]], hashes: list[str]) -> list[list[str]]:
    return [[hashes[i] for i in row] for row in rows]
