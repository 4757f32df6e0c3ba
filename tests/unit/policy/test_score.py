"""The scoring math on hand-built embeddings, where every cosine is known exactly.

Each word below is pinned to its own basis vector; an image vector with chosen cosines to some
words puts the rest of its unit length on a spare axis, so cos(image, word) is exactly the
number the test names.
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, make_png
from hypothesis import given, settings
from hypothesis import strategies as st

from moderator.policy.compile import compile_policy
from moderator.policy.load import load_policies
from moderator.policy.score import CompiledPolicy, Outcome, Status
from moderator.types import Decision

WORDS = ["gun", "rifle", "toy", "photo", "pills", "landscape", "star"]
DIM = len(WORDS) + 1
SPARE = DIM - 1
ENCODER = FakeEncoder(DIM, vectors={w: np.eye(DIM)[i] for i, w in enumerate(WORDS)})

GUN = """\
  - id: w.gun
    category: weapons
    severity: high
    prompts: [gun, rifle]
    counter_prompts: [toy]
    threshold: 0.28
    review_band: 0.03
"""


def image(**cosines: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float64)
    for word, value in cosines.items():
        vector[WORDS.index(word)] = value
    vector[SPARE] = math.sqrt(1 - float(np.sum(vector**2)))
    return vector.astype(np.float32)


async def compile_yaml(
    tmp_path: Path, concepts: str, benign: str = "[photo, landscape]"
) -> CompiledPolicy:
    text = f"version: 1\nname: t\nbenign: {benign}\nconcepts:\n" + textwrap.dedent(concepts)
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    return await compile_policy(load_policies(tmp_path / "p.yaml"), ENCODER)


def one(policy: CompiledPolicy, vector: np.ndarray, surface: str | None = None) -> Outcome:
    (outcome,) = policy.score(vector[None], [surface])
    return outcome


def top_status(outcome: Outcome, concept_id: str) -> Status:
    return next(s.status for s in outcome.top if s.concept_id == concept_id)


async def test_absolute_score_is_the_best_prompt_cosine(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN)
    outcome = one(policy, image(gun=0.20, rifle=0.30))
    assert outcome.decision is Decision.FLAG
    (match,) = outcome.matches
    assert (match.concept_id, match.status, match.threshold) == ("w.gun", Status.MATCH, 0.28)
    assert match.score == pytest.approx(0.30, abs=1e-6)
    assert match.margin == pytest.approx(0.02, abs=1e-6)
    assert outcome.cause == match
    assert one(policy, image(gun=0.20, rifle=0.22)).decision is Decision.ALLOW


async def test_threshold_is_inclusive(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN.replace("0.28", "0.25"))
    assert one(policy, image(gun=0.25)).decision is Decision.FLAG


async def test_counter_prompt_at_least_as_strong_suppresses(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN)
    tied = one(policy, image(gun=0.30, toy=0.30))
    assert tied.decision is Decision.ALLOW
    assert top_status(tied, "w.gun") is Status.SUPPRESSED
    assert tied.top[0].counter_score == pytest.approx(0.30, abs=1e-6)
    weaker = one(policy, image(gun=0.30, toy=0.29))
    assert weaker.decision is Decision.FLAG


async def test_review_band_sends_near_misses_to_review(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN)
    near = one(policy, image(gun=0.26))
    assert near.decision is Decision.REVIEW
    assert [s.concept_id for s in near.near] == ["w.gun"]
    assert near.matches == ()
    assert near.cause is not None
    assert near.cause.status is Status.NEAR
    assert near.near[0].margin == pytest.approx(-0.02, abs=1e-6)
    assert one(policy, image(gun=0.24)).decision is Decision.ALLOW  # below the band
    assert one(policy, image(gun=0.26, toy=0.27)).decision is Decision.ALLOW  # suppressed


async def test_relative_score_is_the_softmax_mass_on_the_concepts_prompts(tmp_path: Path) -> None:
    concept = """\
      - id: d.pills
        category: drugs
        scoring: relative
        prompts: [pills]
        counter_prompts: [photo]
        threshold: 0.6
    """
    policy = await compile_yaml(tmp_path, concept)
    cos = {"pills": 0.30, "photo": 0.28, "landscape": 0.25}
    outcome = one(policy, image(**cos))
    # alternatives: the counter-prompt "photo" and benign "landscape" ("photo" counted once)
    logits = {w: 100.0 * c for w, c in cos.items()}
    expected = math.exp(logits["pills"]) / sum(math.exp(v) for v in logits.values())
    assert outcome.top[0].score == pytest.approx(expected, rel=1e-4)
    assert expected > 0.6
    assert outcome.decision is Decision.FLAG
    closer = one(policy, image(pills=0.30, photo=0.30))
    assert closer.top[0].score == pytest.approx(1 / (2 + math.exp(-30)), rel=1e-4)
    assert closer.decision is Decision.ALLOW
    # Relative scoring has no separate suppression rule: counters act through the softmax.
    assert top_status(closer, "d.pills") is Status.BELOW


async def test_relative_concepts_benign_list_is_used(tmp_path: Path) -> None:
    concept = """\
      - id: d.pills
        category: drugs
        scoring: relative
        prompts: [pills]
        threshold: 0.5
    """
    policy = await compile_yaml(tmp_path, concept, benign="[landscape]")
    assert one(policy, image(pills=0.30, landscape=0.29)).decision is Decision.FLAG
    assert one(policy, image(pills=0.29, landscape=0.30)).decision is Decision.ALLOW


async def test_shadow_concepts_are_reported_but_never_decide(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN + "    mode: shadow\n")
    outcome = one(policy, image(gun=0.40))
    assert outcome.decision is Decision.ALLOW
    assert outcome.matches == ()
    assert [(s.concept_id, s.status) for s in outcome.shadow] == [("w.gun", Status.MATCH)]
    near = one(policy, image(gun=0.26))
    assert near.decision is Decision.ALLOW
    assert near.near == ()
    assert [s.status for s in near.shadow] == [Status.NEAR]


PILLS_ON_POSTS = """\
  - id: d.pills
    category: drugs
    prompts: [pills]
    surfaces: [post]
"""


async def test_surfaces_limit_where_a_concept_applies(tmp_path: Path) -> None:
    policy = await compile_yaml(
        tmp_path, GUN + "    surfaces: [profile_photo, avatar]\n" + PILLS_ON_POSTS
    )
    vector = image(gun=0.40)
    assert one(policy, vector, "profile_photo").decision is Decision.FLAG
    assert one(policy, vector, "avatar").decision is Decision.FLAG
    other = one(policy, vector, "post")  # a surface the policy knows, not the gun's
    assert other.decision is Decision.ALLOW
    assert [s.concept_id for s in other.top] == ["d.pills"]
    # No surface on the event: every concept applies (fail closed).
    assert one(policy, vector, None).decision is Decision.FLAG


async def test_unknown_surfaces_are_checked_by_the_unrestricted_concepts_only(
    tmp_path: Path,
) -> None:
    policy = await compile_yaml(tmp_path, GUN + "    surfaces: [profile_photo]\n" + PILLS_ON_POSTS)
    assert not policy.knows_surface("livestream")
    outcome = one(policy, image(gun=0.40), "livestream")
    assert outcome.decision is Decision.ALLOW  # the gun concept is for profile photos only
    assert outcome.top == ()
    everywhere = await compile_yaml(tmp_path, GUN + PILLS_ON_POSTS)
    assert one(everywhere, image(gun=0.40), "livestream").decision is Decision.FLAG


async def test_surfaces_match_case_insensitively(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN + "    surfaces: [Profile_Photo]\n" + PILLS_ON_POSTS)
    assert policy.concepts[0].surfaces == ("profile_photo",)
    assert policy.surfaces == ("post", "profile_photo")
    for surface in ("profile_photo", "PROFILE_PHOTO", "Profile_photo"):
        assert policy.knows_surface(surface)
        assert one(policy, image(gun=0.40), surface).decision is Decision.FLAG
    assert one(policy, image(gun=0.40), "POST").decision is Decision.ALLOW


async def test_surfaces_differing_only_in_case_are_one_surface_and_one_version(
    tmp_path: Path,
) -> None:
    lower = await compile_yaml(tmp_path, GUN + "    surfaces: [post, avatar]\n")
    mixed = await compile_yaml(tmp_path, GUN + "    surfaces: [POST, Avatar, avatar]\n")
    assert mixed.concepts[0].surfaces == ("post", "avatar")
    assert mixed.version == lower.version


async def test_unrestricted_concepts_apply_to_unknown_surfaces(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN)
    assert one(policy, image(gun=0.40), "never-heard-of-it").decision is Decision.FLAG
    assert policy.surfaces == ()
    assert not policy.knows_surface("never-heard-of-it")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["post", "POST", "Avatar"])))
def test_a_surface_narrows_concepts_only_when_the_policy_names_it(
    surface_policy: CompiledPolicy, surface: str | None
) -> None:
    (row,) = surface_policy.applicable([surface]).tolist()
    known = surface is not None and surface_policy.knows_surface(surface)
    assert known == (surface is not None and surface.casefold() in {"post", "avatar"})
    if surface is None:
        assert row == [True, True, True]  # no surface: every concept
    elif not known:
        assert row == [True, False, False]  # only the concept without surfaces
    else:
        assert surface is not None
        assert row == [True, surface.casefold() == "post", surface.casefold() == "avatar"]
        assert surface_policy.applicable([surface.casefold()]).tolist() == [row]


@pytest.fixture(scope="module")
def surface_policy(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    """Three concepts: everywhere, posts only, avatars only."""
    text = GUN + PILLS_ON_POSTS + "  - id: x.star\n    category: x\n    prompts: [star]\n"
    text += "    surfaces: [AVATAR]\n"
    return asyncio.run(compile_yaml(tmp_path_factory.mktemp("surfaces"), text))


async def test_reference_example_matches_by_image_cosine(tmp_path: Path) -> None:
    example = make_png("anything", seed=3)
    (tmp_path / "ex.png").write_bytes(example)
    concept = GUN.replace("0.28", "0.9") + "    examples: [ex.png]\n    example_threshold: 0.95\n"
    policy = await compile_yaml(tmp_path, concept)
    same = ENCODER.encode_images([example])[0]
    outcome = one(policy, same)
    assert outcome.decision is Decision.FLAG
    (match,) = outcome.matches
    assert match.status is Status.EXAMPLE
    assert match.score == pytest.approx(1.0, abs=1e-5)
    assert match.threshold == 0.95
    # A different image is only judged by its prompts.
    assert one(policy, image(gun=0.1)).decision is Decision.ALLOW


async def test_example_match_is_not_suppressed_by_counter_prompts(tmp_path: Path) -> None:
    png = make_png("toy", seed=9)  # an image that looks like the counter-prompt
    (tmp_path / "ex.png").write_bytes(png)
    policy = await compile_yaml(tmp_path, GUN + "    examples: [ex.png]\n")
    vector = ENCODER.encode_images([png])[0]
    basis = np.eye(DIM, dtype=np.float32)
    toy, gun, rifle = (float(vector @ basis[WORDS.index(w)]) for w in ("toy", "gun", "rifle"))
    assert toy >= max(gun, rifle)  # by prompts alone the counter-prompt would win
    outcome = one(policy, vector)
    assert outcome.decision is Decision.FLAG
    assert outcome.matches[0].status is Status.EXAMPLE


async def test_highest_action_wins_then_severity(tmp_path: Path) -> None:
    concepts = """\
      - id: a.flag_low
        category: a
        severity: low
        action: flag
        prompts: [gun]
      - id: b.review_critical
        category: b
        severity: critical
        action: review
        prompts: [rifle]
      - id: c.flag_high
        category: c
        severity: high
        action: flag
        prompts: [star]
      - id: d.log
        category: d
        severity: critical
        action: log
        prompts: [pills]
    """
    policy = await compile_yaml(tmp_path, concepts)
    both = one(policy, image(gun=0.40, rifle=0.40, star=0.30, pills=0.5))
    assert both.decision is Decision.FLAG
    assert [m.concept_id for m in both.matches] == [
        "c.flag_high",  # flag beats review; among flags, high beats low despite a lower margin
        "a.flag_low",
        "b.review_critical",
        "d.log",
    ]
    assert both.cause is not None
    assert both.cause.concept_id == "c.flag_high"
    review = one(policy, image(rifle=0.40, pills=0.5))
    assert review.decision is Decision.REVIEW
    assert review.cause is not None
    assert review.cause.concept_id == "b.review_critical"
    logged = one(policy, image(pills=0.5))
    assert logged.decision is Decision.ALLOW
    assert logged.cause is None
    assert [m.concept_id for m in logged.matches] == ["d.log"]


async def test_same_action_and_severity_tie_breaks_on_margin(tmp_path: Path) -> None:
    concepts = """\
      - id: a.one
        category: a
        prompts: [gun]
      - id: b.two
        category: b
        prompts: [rifle]
    """
    policy = await compile_yaml(tmp_path, concepts)
    outcome = one(policy, image(gun=0.30, rifle=0.40))
    assert [m.concept_id for m in outcome.matches] == ["b.two", "a.one"]


async def test_log_concepts_do_not_use_the_review_band(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN + "    action: log\n")
    assert one(policy, image(gun=0.26)).decision is Decision.ALLOW


async def test_top_k_orders_applicable_concepts_by_margin(tmp_path: Path) -> None:
    concepts = "".join(
        f"  - id: c.{w}\n    category: c\n    prompts: [{w}]\n    threshold: 0.3\n"
        for w in ["gun", "rifle", "star", "pills"]
    )
    policy = await compile_yaml(tmp_path, concepts)
    (outcome,) = policy.score(image(gun=0.1, rifle=0.25, star=0.2)[None], [None], top_k=2)
    assert [(s.concept_id, s.status) for s in outcome.top] == [
        ("c.rifle", Status.BELOW),
        ("c.star", Status.BELOW),
    ]
    assert outcome.top[0].margin == pytest.approx(-0.05, abs=1e-6)


async def test_a_batch_scores_like_its_rows_one_by_one(tmp_path: Path) -> None:
    concepts = (
        GUN
        + """\
  - id: d.pills
    category: drugs
    scoring: relative
    prompts: [pills]
    threshold: 0.6
    surfaces: [post]
"""
    )
    policy = await compile_yaml(tmp_path, concepts)
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((32, DIM)).astype(np.float32)
    batch /= np.linalg.norm(batch, axis=1, keepdims=True)
    surfaces = [None, "post", "profile"] * 10 + [None, None]
    together = policy.score(batch, surfaces)
    apart = [one(policy, row, s) for row, s in zip(batch, surfaces, strict=True)]
    assert together == apart
    assert {o.decision for o in together} == {Decision.FLAG, Decision.REVIEW, Decision.ALLOW}


async def test_a_concept_score_serializes_to_the_published_json(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN)
    (match,) = one(policy, image(gun=0.3)).matches
    assert match.margin != 0.02  # float32 arithmetic: the JSON rounds it
    assert json.loads(json.dumps(match.wire())) == {
        "id": "w.gun",
        "category": "weapons",
        "severity": "high",
        "action": "flag",
        "mode": "enforce",
        "status": "match",
        "score": 0.3,
        "threshold": 0.28,
        "margin": 0.02,
        "counter_score": 0.0,
    }


async def test_empty_policy_and_empty_batch(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\nname: empty\nconcepts: []\n")
    empty = await compile_policy(load_policies(tmp_path / "p.yaml"), ENCODER)
    assert empty.score(image(gun=0.9)[None], [None])[0].decision is Decision.ALLOW
    assert empty.score(np.zeros((0, DIM), dtype=np.float32), []) == []


async def test_embeddings_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    policy = await compile_yaml(tmp_path, GUN)
    with pytest.raises(ValueError, match="dimension 8"):
        policy.score(np.ones((1, 4), dtype=np.float32), [None])
    with pytest.raises(ValueError, match="surfaces"):
        policy.score(image(gun=0.3)[None], [None, None])


async def test_a_review_match_is_the_cause_before_a_near_flag_concept(tmp_path: Path) -> None:
    concepts = """\
      - id: a.flag
        category: a
        severity: critical
        prompts: [gun]
        threshold: 0.3
        review_band: 0.1
      - id: b.review
        category: b
        severity: low
        action: review
        prompts: [rifle]
    """
    policy = await compile_yaml(tmp_path, concepts)
    outcome = one(policy, image(gun=0.25, rifle=0.4))
    assert outcome.decision is Decision.REVIEW
    assert [s.concept_id for s in outcome.near] == ["a.flag"]
    assert outcome.cause is not None
    assert outcome.cause.concept_id == "b.review"


def test_public_api_is_sorted_and_importable() -> None:
    import moderator.policy as api

    assert api.__all__ == sorted(api.__all__)
    assert all(hasattr(api, name) for name in api.__all__)
