"""Verdicts built from the demo model and policy match the published JSON Schema.

The schema is generated from `Verdict`, so these tests check the other half of the contract:
that what `build_verdict` makes and `wire()` writes is valid against the committed file, for
every decision, with and without the echoed fields, and after truncation.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moderator.demo.shapes import generate
from moderator.embed import load_model
from moderator.embed.runtime import ClipRuntime
from moderator.kafka.publish import encode_json
from moderator.pipeline.events import ImageEvent
from moderator.policy import (
    Action,
    CompiledPolicy,
    MemoryEmbeddingCache,
    compile_policy,
    load_policies,
)
from moderator.policy.schema import Mode, Severity
from moderator.policy.score import ConceptScore, Outcome, Status
from moderator.service.verdict import Echoed, Verdict, _figure, build_verdict
from moderator.types import Decision, Embeddings

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "deploy" / "schemas" / "verdict.schema.json").read_text("utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SURFACES = [None, "upload", "profile_photo"]


class Demo:
    """The demo model, the demo policy, and embeddings of generated shapes (each once)."""

    def __init__(self) -> None:
        self.runtime: ClipRuntime = load_model("demo", providers=["cpu"])
        loaded = load_policies(ROOT / "policies" / "demo.yaml", tokens=self.runtime)
        self.policy: CompiledPolicy = asyncio.run(
            compile_policy(loaded, self.runtime, MemoryEmbeddingCache())
        )
        images = []
        for sample in generate(48, seed=7):
            out = io.BytesIO()
            sample.image.save(out, format="PNG")
            images.append(out.getvalue())
        self.embeddings: Embeddings = self.runtime.encode_images(images)

    def outcomes(self, embeddings: Embeddings, surfaces: Sequence[str | None]) -> list[Outcome]:
        return self.policy.score(embeddings, surfaces)

    def verdict(self, outcome: Outcome, event: ImageEvent, *, cached: bool = False) -> Verdict:
        return build_verdict(
            event,
            outcome,
            self.policy,
            self.runtime,
            image_sha="ab" * 32,
            timings={"embed": 0.0123456, "score": 0.0000042},
            cached=cached,
        )


@pytest.fixture(scope="module")
def demo() -> Demo:
    return Demo()


def check(record: dict[str, Any]) -> dict[str, Any]:
    """Validate against the committed schema, through the JSON text a consumer reads."""
    text = json.dumps(record, separators=(",", ":"), allow_nan=False)
    decoded: dict[str, Any] = json.loads(text)
    VALIDATOR.validate(decoded)
    return decoded


def test_the_demo_verdicts_cover_every_decision_and_all_fit_the_schema(demo: Demo) -> None:
    surfaces = [SURFACES[i % 3] for i in range(len(demo.embeddings))]
    outcomes = demo.outcomes(demo.embeddings, surfaces)
    verdicts = [
        demo.verdict(o, ImageEvent(id=f"e{i}", surface=s))
        for i, (o, s) in enumerate(zip(outcomes, surfaces, strict=True))
    ]
    assert {v.decision for v in verdicts} == set(Decision)
    assert any(v.shadow for v in verdicts)
    assert any(m.action is Action.LOG for v in verdicts for m in v.matches)
    for verdict in verdicts:
        assert verdict.encoded() == encode_json(verdict.wire())
        assert verdict.without_echoed().encoded() == encode_json(verdict.without_echoed().wire())
        record = check(verdict.wire())
        assert record["decision"] == verdict.decision.value
        assert [m["id"] for m in record["matches"]] == [m.concept_id for m in verdict.matches]


def test_the_wire_form_has_every_field_and_truncated_only_when_set(demo: Demo) -> None:
    (outcome,) = demo.outcomes(demo.embeddings[:1], [None])
    record = check(demo.verdict(outcome, ImageEvent(id="bare")).wire())
    assert list(record) == SCHEMA["required"]
    assert record["surface"] is record["source"] is record["metadata"] is None
    assert record["submitted_at"] is None
    assert record["timings_ms"] == {"embed": 12.346, "score": 0.004}


def test_concept_figures_are_rounded_on_the_wire_only(demo: Demo) -> None:
    (outcome,) = demo.outcomes(demo.embeddings[:1], [None])
    verdict = demo.verdict(outcome, ImageEvent(id="r"))
    entry, sent = verdict.top[0], verdict.wire()["top"][0]
    assert sent["id"] == entry.concept_id
    assert sent["score"] == round(entry.score, 4)
    assert sent["margin"] == round(entry.margin, 4)
    assert entry.score != sent["score"]  # the model keeps full precision


def test_a_truncated_verdict_nulls_the_echoed_fields_it_had_and_names_them(demo: Demo) -> None:
    (outcome,) = demo.outcomes(demo.embeddings[:1], ["upload"])
    full = demo.verdict(
        outcome, ImageEvent(id="t", surface="upload", source="app", metadata={"k": [1, None]})
    )
    cut = full.without_echoed()
    record = check(cut.wire())
    assert record["truncated"] == ["metadata", "source"]
    assert record["metadata"] is record["source"] is None
    assert record["surface"] == "upload"
    assert {k: v for k, v in record.items() if k not in ("metadata", "source", "truncated")} == {
        k: v for k, v in full.wire().items() if k not in ("metadata", "source")
    }
    assert full.metadata == {"k": [1, None]}  # the original is untouched
    only_source = demo.verdict(outcome, ImageEvent(id="s", source="app")).without_echoed()
    assert only_source.truncated == (Echoed.SOURCE,)
    assert check(only_source.wire())["truncated"] == ["source"]


def test_nan_stays_a_float_for_the_encoder_to_refuse(demo: Demo) -> None:
    (outcome,) = demo.outcomes(demo.embeddings[:1], [None])
    verdict = demo.verdict(outcome, ImageEvent(id="n"))
    bad = verdict.model_copy(update={"timings_ms": {"embed": math.nan}})
    with pytest.raises(ValueError, match="not JSON compliant"):
        json.dumps(bad.wire(), allow_nan=False)
    with pytest.raises(ValueError, match="not JSON compliant"):
        bad.encoded()
    for value in (math.nan, math.inf, -math.inf):
        entry = verdict.top[0].model_copy(update={"score": value})
        with pytest.raises(ValueError, match="not JSON compliant"):
            verdict.model_copy(update={"top": (entry,)}).encoded()


def _json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


_texts = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    image=st.integers(0, 47),
    noise=st.floats(0, 2),
    seed=st.integers(0, 2**32 - 1),
    surface=st.none() | st.sampled_from(SURFACES[1:]) | _texts,
    source=st.none() | _texts,
    metadata=st.none() | st.dictionaries(st.text(max_size=8), _json_values(), max_size=5),
    submitted=st.none() | st.datetimes(timezones=st.just(UTC)),
    cached=st.booleans(),
    truncate=st.booleans(),
)
def test_any_outcome_and_echoed_fields_make_a_verdict_that_fits_the_schema(
    demo: Demo,
    image: int,
    noise: float,
    seed: int,
    surface: str | None,
    source: str | None,
    metadata: dict[str, Any] | None,
    submitted: datetime | None,
    cached: bool,
    truncate: bool,
) -> None:
    # A demo image's embedding pushed off by noise: near a shape it decides like the demo,
    # far from every shape it lands anywhere in the policy's score space.
    shift = np.random.default_rng(seed).standard_normal(demo.embeddings.shape[1])
    vector = (demo.embeddings[image] + noise * shift).astype(np.float32)
    vector /= np.linalg.norm(vector)
    (outcome,) = demo.outcomes(vector[None, :], [surface])
    event = ImageEvent(
        id="p", surface=surface, source=source, metadata=metadata, submitted_at=submitted
    )
    verdict = demo.verdict(outcome, event, cached=cached)
    if truncate:
        verdict = verdict.without_echoed()
    assert verdict.encoded() == encode_json(verdict.wire())
    record = check(verdict.wire())
    assert record["decision"] == outcome.decision.value
    assert record["cached"] is cached
    assert record["surface"] == surface
    assert ("truncated" in record) is truncate
    if not truncate:
        assert record["source"] == source
        assert record["metadata"] == metadata
    assert record["submitted_at"] == (submitted.isoformat() if submitted else None)


# Any text at all: lone surrogates, controls, quotes, backslashes, non-ASCII.
_any_text = st.text(st.characters(exclude_categories=()), max_size=12)
_figures = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 0.5, 0.00005, -0.00005, 1e-4, 1e16, 5e-324]
)
_entries = st.builds(
    ConceptScore,
    concept_id=_any_text,
    category=_any_text,
    severity=st.sampled_from(Severity),
    action=st.sampled_from(Action),
    mode=st.sampled_from(Mode),
    status=st.sampled_from(Status),
    score=_figures,
    threshold=_figures,
    margin=_figures,
    counter_score=st.none() | _figures,
)
_groups = st.lists(_entries, max_size=3).map(tuple)


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(-2, 2)
    | st.integers(-(10**9), 10**9).map(lambda n: n / 2e4)  # ties at the fifth decimal
    | st.sampled_from([0.0, -0.0, 5e-5, -5e-5, 4.9999e-5, 1e-4, 0.99995, 1e9 - 1e-5, 1e9, 1e16])
)
def test_a_figure_is_written_as_rounding_it_then_encoding_it_would(value: float) -> None:
    assert _figure(value) == json.dumps(round(value, 4))


class _Named:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version
        self.model_id, self.sha256 = name, version


@settings(max_examples=150, deadline=None)
@given(
    event_id=_any_text,
    decision=st.sampled_from(Decision),
    groups=st.tuples(_groups, _groups, _groups, _groups),
    names=st.tuples(_any_text, _any_text, _any_text, _any_text, _any_text),
    surface=st.none() | _any_text,
    source=st.none() | _any_text,
    metadata=st.none() | st.dictionaries(_any_text, _json_values(), max_size=4),
    # Stage names come from the service itself, never from an event: plain identifiers.
    timings=st.dictionaries(
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        _figures | st.integers(-(10**6), 10**6),
        max_size=4,
    ),
    cached=st.booleans(),
    truncate=st.booleans(),
)
def test_the_written_json_is_byte_identical_to_encoding_wire(
    event_id: str,
    decision: Decision,
    groups: tuple[tuple[ConceptScore, ...], ...],
    names: tuple[str, str, str, str, str],
    surface: str | None,
    source: str | None,
    metadata: dict[str, Any] | None,
    timings: dict[str, float],
    cached: bool,
    truncate: bool,
) -> None:
    matches, near, shadow, top = groups
    outcome = Outcome(decision, matches, near, shadow, top, policy_version=names[1])
    verdict = build_verdict(
        ImageEvent(id=event_id, surface=surface, source=source, metadata=metadata),
        outcome,
        _Named(names[0], names[1]),
        _Named(names[2], names[3]),
        image_sha=names[4],
        timings=timings,
        cached=cached,
    )
    if truncate:
        verdict = verdict.without_echoed()
    try:
        expected = encode_json(verdict.wire())
    except ValueError:  # a figure rounded or scaled out of range
        with pytest.raises(ValueError, match="not JSON compliant"):
            verdict.encoded()
        return
    assert verdict.encoded() == expected


def test_metadata_only_pydantic_can_write_falls_back_to_it() -> None:
    outcome = Outcome(Decision.ALLOW, (), (), (), (), policy_version="v")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    verdict = build_verdict(
        ImageEvent(id="m", metadata={"when": when, "pair": (1, 2)}),
        outcome,
        _Named("p", "v"),
        _Named("m", "s"),
        image_sha="ab",
        timings={},
        cached=False,
    )
    assert verdict.encoded() == encode_json(verdict.wire())
    written = json.loads(verdict.encoded())["metadata"]
    assert written["pair"] == [1, 2]
    assert written["when"].startswith("2026-01-02T03:04:05")
