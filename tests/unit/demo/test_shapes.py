"""The procedural shapes world: deterministic, complete, and unambiguous by construction."""

from __future__ import annotations

import numpy as np
import pytest

from moderator.demo import shapes


def _bytes(n: int, seed: int, size: int = 64) -> list[bytes]:
    return [s.image.tobytes() for s in shapes.generate(n, seed, size=size)]


def test_same_seed_gives_identical_images() -> None:
    assert _bytes(30, seed=7) == _bytes(30, seed=7)


def test_different_seeds_give_different_images() -> None:
    assert _bytes(5, seed=1) != _bytes(5, seed=2)


def test_a_prefix_of_a_longer_run_equals_a_shorter_run() -> None:
    assert _bytes(30, seed=3)[:10] == _bytes(10, seed=3)


def test_every_block_of_24_covers_every_combo_once() -> None:
    samples = list(shapes.generate(48, seed=5, size=32))
    for block in (samples[:24], samples[24:]):
        assert sorted((s.shape, s.color) for s in block) == sorted(shapes.combos())
    assert {s.label for s in samples} == {f"{c} {s}" for s, c in shapes.combos()}


@pytest.mark.parametrize(("shape", "color"), shapes.combos())
def test_every_combo_renders_at_the_requested_size(shape: str, color: str) -> None:
    rng = np.random.default_rng(0)
    for size in (32, 97, 224):
        image = shapes.render(shape, color, rng, size=size)
        assert image.size == (size, size)
        assert image.mode == "RGB"


def test_generate_honours_size() -> None:
    assert {s.image.size for s in shapes.generate(10, seed=0, size=100)} == {(100, 100)}


def test_the_target_colour_is_present_in_the_image() -> None:
    """Some pixels lie within jitter of the named colour: the shape is drawn, not hidden."""
    for sample in shapes.generate(48, seed=11, size=96):
        pixels = np.asarray(sample.image, dtype=np.float64).reshape(-1, 3)
        named = np.asarray(shapes._RGB[sample.color], dtype=np.float64)
        near = np.linalg.norm(pixels - named, axis=1) < 40
        assert near.sum() > 0.02 * len(pixels), sample.label


@pytest.mark.parametrize("kind", shapes.BACKGROUNDS)
@pytest.mark.parametrize("color", shapes.COLORS)
def test_backgrounds_keep_their_distance_from_the_target_colour(kind: str, color: str) -> None:
    rng = np.random.default_rng(3)
    named = np.asarray(shapes._RGB[color], dtype=np.float64)
    for _ in range(25):
        background = shapes._background(kind, shapes._RGB[color], rng, 48).astype(np.float64)
        distance = np.linalg.norm(background.reshape(-1, 3) - named, axis=1)
        assert distance.min() >= shapes._MIN_CONTRAST - 2  # rounding to uint8


def test_captions_vary_and_name_both_attributes() -> None:
    rng = np.random.default_rng(0)
    texts = {shapes.captions("star", "yellow", rng) for _ in range(200)}
    assert len(texts) >= 8
    for text in texts:
        assert "star" in text.split()
        assert "yellow" in text.split()


def test_caption_words_cover_every_caption() -> None:
    vocabulary = set(shapes.caption_words())
    rng = np.random.default_rng(1)
    for shape, color in shapes.combos():
        for _ in range(30):
            assert set(shapes.captions(shape, color, rng).split()) <= vocabulary


def test_class_prompts_are_the_24_canonical_ones_in_combo_order() -> None:
    prompts = shapes.class_prompts()
    assert len(prompts) == len(set(prompts)) == 24
    assert prompts[0] == "a photo of a red circle"
    assert prompts == [f"a photo of a {c} {s}" for s, c in shapes.combos()]


@pytest.mark.parametrize(("shape", "color"), [("hexagon", "red"), ("circle", "purple")])
def test_unknown_attributes_are_refused(shape: str, color: str) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown"):
        shapes.render(shape, color, rng)
    with pytest.raises(ValueError, match="unknown"):
        shapes.captions(shape, color, rng)
