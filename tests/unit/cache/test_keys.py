"""moderator.cache.keys and moderator.cache.memory: namespaces, entry checks, and the in-memory
cache's parity with Redis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from moderator.cache.keys import (
    UNIT_NORM_TOLERANCE,
    embedding_problem,
    image_namespace,
)
from moderator.cache.memory import MemoryEmbeddingCache
from moderator.pipeline.decode.cpu import PREPROCESS_VERSION, PreprocessSpec

SHA = "ab" * 32
SPEC = PreprocessSpec(image_size=224, resize_shortest_edge=224)


def test_image_namespace_is_stable_for_a_fixed_spec() -> None:
    # Pinned: a change here re-keys every deployed image cache; make it on purpose.
    assert PREPROCESS_VERSION == 1
    assert image_namespace(SHA, SPEC) == f"img:{SHA}:cafa9054546a"
    assert image_namespace(SHA, PreprocessSpec(224, 224)) == image_namespace(SHA, SPEC)


@pytest.mark.parametrize(
    ("sha", "spec"),
    [
        ("cd" * 32, SPEC),
        (SHA, PreprocessSpec(image_size=336, resize_shortest_edge=224)),
        (SHA, PreprocessSpec(image_size=224, resize_shortest_edge=256)),
    ],
)
def test_image_namespace_differs_when_the_model_or_preprocessing_differs(
    sha: str, spec: PreprocessSpec
) -> None:
    assert image_namespace(sha, spec) != image_namespace(SHA, SPEC)


def test_image_namespace_follows_the_preprocess_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = image_namespace(SHA, SPEC)
    monkeypatch.setattr("moderator.cache.keys.PREPROCESS_VERSION", PREPROCESS_VERSION + 1)
    assert image_namespace(SHA, SPEC) != before


def test_refusal_limits_do_not_change_the_namespace() -> None:
    strict = PreprocessSpec(224, 224, max_bytes=1000, max_pixels=1000, allowed_formats={"PNG"})
    assert image_namespace(SHA, strict) == image_namespace(SHA, SPEC)


def test_image_namespace_keeps_the_kind_first() -> None:
    assert image_namespace(SHA, SPEC).split(":", 1)[0] == "img"


def _unit(dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.mark.parametrize(
    ("vector", "fragment"),
    [
        (_unit(4), "expected 8"),
        (np.zeros(8, np.float32), "norm"),
        (_unit(8) * 2, "norm"),
        (np.r_[_unit(7), np.float32(np.nan)].astype(np.float32), "NaN"),
        (np.r_[_unit(7), np.float32(-np.inf)].astype(np.float32), "NaN or Inf"),
        (np.zeros((2, 8), np.float32), "shape"),
        (np.zeros(0, np.float32), "shape"),
    ],
)
def test_embedding_problem_names_what_is_wrong(vector: np.ndarray, fragment: str) -> None:
    problem = embedding_problem(vector, 8)
    assert problem is not None
    assert fragment in problem


def test_embedding_problem_accepts_unit_vectors_and_fp16_rounding() -> None:
    assert embedding_problem(_unit(8), 8) is None
    assert embedding_problem(_unit(768).astype(np.float16).astype(np.float32), 768) is None


def test_without_a_dimension_only_shape_and_finiteness_are_checked() -> None:
    assert embedding_problem(np.ones(3, np.float32), None) is None
    assert embedding_problem(np.array([1, np.nan], np.float32), None) is not None


@given(arrays(np.float32, st.integers(0, 12)))
def test_embedding_problem_passes_only_finite_unit_vectors_of_the_dimension(
    vector: np.ndarray,
) -> None:
    ok = embedding_problem(vector, 8) is None
    expected = (
        vector.shape == (8,)
        and bool(np.isfinite(vector).all())
        and abs(float(np.linalg.norm(vector.astype(np.float64))) - 1) < UNIT_NORM_TOLERANCE
    )
    assert ok == expected


async def test_memory_cache_reads_bad_entries_as_misses_like_redis() -> None:
    cache = MemoryEmbeddingCache(dim=8)
    await cache.set_many(
        "txt:m",
        {"good": _unit(8), "nan": np.full(8, np.nan, np.float32), "short": _unit(4)},
        ttl_s=60,
    )
    good, nan, short = await cache.get_many("txt:m", ["good", "nan", "short"])
    assert good is not None
    np.testing.assert_array_equal(good, _unit(8))
    assert nan is None
    assert short is None
    assert (cache.hits, cache.invalid, cache.misses) == (1, 2, 0)
    assert len(cache) == 1  # bad entries are dropped, not read again
