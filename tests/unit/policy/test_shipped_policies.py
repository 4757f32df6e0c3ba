"""The policies in policies/ validate cleanly, compile, and the demo one fits the demo model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeEncoder

from moderator.demo.shapes import caption_words
from moderator.policy.compile import compile_policy
from moderator.policy.load import load_policies
from moderator.policy.schema import Action, Mode, Scoring

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.mark.parametrize("name", ["default.yaml", "demo.yaml"])
async def test_shipped_policy_is_valid_without_warnings(name: str) -> None:
    loaded = load_policies(POLICIES / name, tokens=FakeEncoder())
    assert loaded.warnings == ()
    assert all(c.counter_prompts for c in loaded.concepts if c.scoring is Scoring.ABSOLUTE)
    compiled = await compile_policy(loaded, FakeEncoder())
    assert len(compiled.concepts) == len(loaded.concepts) >= 5


def test_default_policy_covers_the_documented_categories() -> None:
    concepts = load_policies(POLICIES / "default.yaml").concepts
    categories = {c.category for c in concepts}
    assert {
        "weapons",
        "violence",
        "nudity",
        "drugs",
        "hate",
        "self_harm",
        "extremism",
    } <= categories
    self_harm = [c for c in concepts if c.category == "self_harm"]
    assert self_harm
    assert all(c.action is Action.REVIEW for c in self_harm)
    assert all(c.counter_prompts for c in concepts)


def test_demo_policy_shows_every_feature_in_the_demo_vocabulary() -> None:
    concepts = {c.id: c for c in load_policies(POLICIES / "demo.yaml").concepts}
    red_star = concepts["shapes.red_star"]
    assert red_star.scoring is Scoring.RELATIVE
    assert red_star.action is Action.FLAG
    assert len(red_star.benign) + len(red_star.counter_prompts) == 23  # the other combinations
    assert concepts["shapes.blue_circle"].action is Action.REVIEW
    assert any(c.mode is Mode.SHADOW for c in concepts.values())
    assert any(c.action is Action.LOG for c in concepts.values())
    assert any(c.surfaces for c in concepts.values())
    vocabulary = set(caption_words())
    for c in concepts.values():
        for text in (*c.prompts, *c.counter_prompts, *c.benign):
            assert set(text.split()) <= vocabulary, text
