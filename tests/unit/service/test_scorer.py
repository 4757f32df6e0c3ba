"""`Scorer`: the calls of one loop iteration share one `policy.score`, and each gets what
scoring it alone would have given, under the policy that was in force for its flush."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from moderator.demo.shapes import generate
from moderator.embed import load_model
from moderator.policy import CompiledPolicy, MemoryEmbeddingCache, compile_policy, load_policies
from moderator.policy.score import ConceptScore, Outcome
from moderator.service.scorer import Scorer
from moderator.types import Embeddings

ROOT = Path(__file__).resolve().parents[3]
SURFACES = [None, "upload", "profile_photo", "UPLOAD", "nowhere"]


@dataclass
class _Demo:
    policy: CompiledPolicy
    images: Embeddings


@pytest.fixture(scope="module")
def demo() -> _Demo:
    runtime = load_model("demo", providers=["cpu"])
    loaded = load_policies(ROOT / "policies" / "demo.yaml", tokens=runtime)
    policy = asyncio.run(compile_policy(loaded, runtime, MemoryEmbeddingCache()))
    pngs = []
    for sample in generate(24, seed=3):
        out = io.BytesIO()
        sample.image.save(out, format="PNG")
        pngs.append(out.getvalue())
    return _Demo(policy, runtime.encode_images(pngs))


@dataclass
class _Policies:
    """A `Policies` whose policy in force the test swaps."""

    current: CompiledPolicy


@dataclass
class _Calls:
    """Every `CompiledPolicy.score` call made: the batch sizes, in order."""

    sizes: list[int] = field(default_factory=list)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> _Calls:
    seen = _Calls()
    original = CompiledPolicy.score

    def counted(self: CompiledPolicy, embeddings: Embeddings, *args: Any, **kw: Any) -> Any:
        seen.sizes.append(len(embeddings))
        return original(self, embeddings, *args, **kw)

    monkeypatch.setattr(CompiledPolicy, "score", counted)
    return seen


def _run(scorer: Scorer, rows: Sequence[tuple[np.ndarray, str | None]]) -> list[Any]:
    """Score `rows` concurrently, as the event tasks of one model batch do."""

    async def main() -> list[Any]:
        return await asyncio.gather(*(scorer.score(e, s) for e, s in rows), return_exceptions=True)

    return asyncio.run(main())


def test_concurrent_calls_share_one_policy_call(demo: _Demo, calls: _Calls) -> None:
    charged: list[tuple[str, float]] = []
    scorer = Scorer(_Policies(demo.policy), on_cpu=lambda s, t: charged.append((s, t)))
    rows = [(demo.images[i], SURFACES[i % len(SURFACES)]) for i in range(len(demo.images))]
    results = _run(scorer, rows)
    assert calls.sizes == [len(rows)]
    assert [s for s, _ in charged] == ["score"]  # charged once for the flush
    assert charged[0][1] >= 0
    assert all(r.policy is demo.policy for r in results)
    assert [r.outcome.decision for r in results] == [
        demo.policy.score(e[None, :], [s])[0].decision for e, s in rows
    ]


def test_calls_of_later_iterations_make_their_own_flush(demo: _Demo, calls: _Calls) -> None:
    scorer = Scorer(_Policies(demo.policy))

    async def main() -> None:
        first = asyncio.gather(*(scorer.score(demo.images[i], None) for i in range(3)))
        await asyncio.sleep(0)  # the three tasks have joined the first flush
        second = scorer.score(demo.images[3], "upload")
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert calls.sizes == [3, 1]
    assert scorer.flushes == 2


def test_each_flush_reads_the_policy_in_force_once_and_returns_it(
    demo: _Demo, calls: _Calls
) -> None:
    older = demo.policy
    newer = replace(demo.policy, version="v-next")
    policies = _Policies(older)
    scorer = Scorer(policies)

    async def reload_then_score() -> Any:
        policies.current = newer  # a reload between two calls that share a flush
        return await scorer.score(demo.images[1], None)

    async def main() -> tuple[list[Any], list[Any]]:
        got = await asyncio.gather(scorer.score(demo.images[0], None), reload_then_score())
        policies.current = older
        after = await asyncio.gather(*(scorer.score(demo.images[i], None) for i in range(2)))
        return got, after

    got, after = asyncio.run(main())
    assert calls.sizes == [2, 2]
    assert [r.policy for r in got] == [newer, newer]  # read when the flush ran, once
    assert [r.outcome.policy_version for r in got] == ["v-next", "v-next"]
    assert [r.policy for r in after] == [older, older]
    assert [r.outcome.policy_version for r in after] == [older.version, older.version]


def test_a_policy_that_raises_fails_every_waiter_of_its_flush_and_only_those(
    demo: _Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = Scorer(_Policies(demo.policy))
    original = CompiledPolicy.score
    failures = iter([RuntimeError("policy bug")])

    def flaky(self: CompiledPolicy, *args: Any, **kw: Any) -> list[Outcome]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return original(self, *args, **kw)

    monkeypatch.setattr(CompiledPolicy, "score", flaky)
    failed = _run(scorer, [(demo.images[i], None) for i in range(4)])
    assert [type(r) for r in failed] == [RuntimeError] * 4
    assert all(str(r) == "policy bug" for r in failed)
    later = _run(scorer, [(demo.images[i], None) for i in range(2)])  # the scorer goes on
    assert [r.policy for r in later] == [demo.policy, demo.policy]


def test_a_policy_that_cannot_be_read_fails_the_waiters_rather_than_cancelling_them(
    demo: _Demo,
) -> None:
    class Broken:
        @property
        def current(self) -> CompiledPolicy:
            raise OSError("policy store unreachable")

    failed = _run(Scorer(Broken()), [(demo.images[i], None) for i in range(3)])
    assert [type(r) for r in failed] == [OSError] * 3


def test_an_embedding_that_does_not_fit_fails_alone(demo: _Demo, calls: _Calls) -> None:
    scorer = Scorer(_Policies(demo.policy))
    short = np.zeros(3, dtype=np.float32)
    results = _run(scorer, [(demo.images[0], None), (short, None), (demo.images[1], None)])
    assert isinstance(results[1], ValueError)
    assert "does not fit" in str(results[1])
    assert [r.policy for r in (results[0], results[2])] == [demo.policy, demo.policy]
    assert calls.sizes == [2]


def test_a_cancelled_waiter_does_not_break_the_others(demo: _Demo, calls: _Calls) -> None:
    scorer = Scorer(_Policies(demo.policy))

    async def main() -> tuple[list[Any], bool]:
        tasks = [asyncio.create_task(scorer.score(demo.images[i], None)) for i in range(3)]
        await asyncio.sleep(0)  # all three wait on the flush, which has not run yet
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, tasks[1].cancelled()

    results, cancelled = asyncio.run(main())
    assert cancelled
    assert isinstance(results[1], asyncio.CancelledError)
    assert [r.policy for r in (results[0], results[2])] == [demo.policy, demo.policy]
    assert calls.sizes == [2]  # the cancelled row was not scored


def test_a_flush_whose_waiters_are_all_gone_scores_nothing(demo: _Demo, calls: _Calls) -> None:
    scorer = Scorer(_Policies(demo.policy))

    async def main() -> None:
        tasks = [asyncio.create_task(scorer.score(demo.images[i], None)) for i in range(2)]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scorer.score(demo.images[0], None)

    asyncio.run(main())
    assert calls.sizes == [1]


def _boundary_gap(policy: CompiledPolicy, embedding: np.ndarray) -> float:
    """How close a row's figures come to a place where float32 noise could change the
    outcome: a threshold, a review band's edge, a counter-prompt tie, a tie in the ranking."""
    m = policy.scores(embedding[None, :])
    score, cosine = m.score[0], m.cosine[0]
    gaps = [
        np.abs(score - policy.thresholds),
        np.abs(score - (policy.thresholds - policy.review_bands)),
        np.abs(np.nan_to_num(m.example[0], nan=9) - policy.example_thresholds),
        np.abs(np.nan_to_num(m.counter[0], nan=9) - cosine),
    ]
    margins = np.sort(np.concatenate([score - policy.thresholds, m.example[0] - 1]))
    gaps.append(np.diff(margins[np.isfinite(margins)]))
    return float(min(g.min() for g in gaps if g.size))


def _same(a: ConceptScore, b: ConceptScore) -> bool:
    figures = ("score", "threshold", "margin")
    plain = a.model_dump(exclude={*figures, "counter_score"})
    close = all(abs(getattr(a, f) - getattr(b, f)) < 1e-5 for f in figures)
    counters = (a.counter_score is None) == (b.counter_score is None)
    return plain == b.model_dump(exclude={*figures, "counter_score"}) and close and counters


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(
        st.tuples(
            st.integers(0, 23),
            st.sampled_from([0.0, 0.3, 0.6]) | st.floats(0, 3),
            st.integers(0, 2**32 - 1),
            st.sampled_from(SURFACES),
        ),
        min_size=1,
        max_size=24,
    )
)
def test_batched_scoring_equals_scoring_one_by_one(
    demo: _Demo, picks: list[tuple[int, float, int, str | None]]
) -> None:
    # Demo images pushed off by noise: near a shape they match like it, far off anything goes.
    rows = []
    for image, noise, seed, surface in picks:
        shift = np.random.default_rng(seed).standard_normal(demo.images.shape[1])
        vector = (demo.images[image] + noise * shift).astype(np.float32)
        rows.append((vector / np.linalg.norm(vector), surface))
    batched = _run(Scorer(_Policies(demo.policy)), rows)
    for (embedding, surface), got in zip(rows, batched, strict=True):
        (alone,) = demo.policy.score(embedding[None, :], [surface])
        assert got.policy is demo.policy
        # One row and a batch use different BLAS kernels, equal up to float32 rounding; an
        # outcome can only differ where a figure sits that close to a threshold or a tie.
        if _boundary_gap(demo.policy, embedding) <= 1e-4:
            event("a row on a boundary, not compared")
            continue
        event(f"decision {alone.decision.value}")
        assert got.outcome.decision is alone.decision
        for group in ("matches", "near", "shadow", "top"):
            mine, theirs = getattr(got.outcome, group), getattr(alone, group)
            assert len(mine) == len(theirs), group
            assert all(_same(a, b) for a, b in zip(mine, theirs, strict=True)), group
