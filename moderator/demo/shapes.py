"""Procedural images of coloured shapes: the world the demo CLIP model knows.

The demo model is trained from scratch on these images, and tests, `make demo` and the policy
tools draw from the same generator at run time, so it depends on Pillow and numpy only.

Every image shows one *target* shape in one of the named colours; its label is exactly that
(shape, colour) pair. To keep labels unambiguous:

- the target's colour is jittered only slightly around its named RGB value, far from the others;
- backgrounds (solid, gradient, noise) are muted tints, and every background colour is kept at
  least `_MIN_CONTRAST` (RGB distance) from the target's named colour, so a white shape never
  sits on a near-white field and a black one never on a near-black field;
- distractors (some images only) are much smaller than the target, never overlap it, and differ
  from it in *both* shape and colour: a distractor that shared either attribute would make a
  prompt naming that attribute half-true, and one near the target's size would make "which
  shape is the picture of" a matter of taste.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "black")

# Named colours as RGB; pairwise distances are all > 150, so the jitter below (a shared
# brightness shift plus a small per-channel wobble) never brings one near another.
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
_COLOR_JITTER = 15
_HUE_JITTER = 8

# Backgrounds must be at least this far (Euclidean RGB) from the target's named colour.
_MIN_CONTRAST = 150.0
# Background tints mix a random hue into grey by at most this much, so a background never
# reads as one of the named colours itself (apart from near-white/near-black greys).
_MAX_BG_SATURATION = 0.35
# Per-channel amplitude of noise backgrounds (low-frequency blobs, then per-pixel grain). The
# base colour keeps _MIN_CONTRAST plus the worst case over three channels (√3 × amplitude) away.
_NOISE_BLOB = 30
_NOISE_GRAIN = 10
_NOISE_MARGIN = _MIN_CONTRAST + math.sqrt(3) * (_NOISE_BLOB + _NOISE_GRAIN)
BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "noise")

# Target size: circumradius as a fraction of the image side. The lower bound keeps the shape
# ~14 px across or more after the model's 64 px resize; the upper bound keeps it inside.
_TARGET_RADIUS = (0.20, 0.40)
# Distractors: how often, how many, and their radius relative to the target's (area ≤ ~1/8).
_DISTRACTOR_PROB = 0.35
_MAX_DISTRACTORS = 3
_DISTRACTOR_RADIUS = (0.20, 0.35)
# Star inner/outer radius ratio: low enough that the points read at 64 px.
_STAR_INNER = 0.45

_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape}",
    "a photo of a {color} {shape}",
    "a {shape} that is {color}",
    "a picture of a {color} {shape}",
    "an image of a {color} {shape}",
    "a drawing of a {color} {shape}",
    "a {color} colored {shape}",
    "the {shape} is {color}",
    "a {color} {shape} on a plain background",
    "a photo of a {shape} in {color}",
    "a simple {color} {shape} shape",
    "{color} {shape}",
)
CANONICAL_TEMPLATE = "a photo of a {color} {shape}"


@dataclass(frozen=True)
class ShapeSample:
    """One generated image and the (shape, colour) it is a picture of."""

    shape: str
    color: str
    image: Image.Image

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"


def combos() -> list[tuple[str, str]]:
    """All (shape, colour) pairs, in the order `class_prompts` names them."""
    return [(shape, color) for shape in SHAPES for color in COLORS]


def class_prompts() -> list[str]:
    """The 24 canonical prompts, index-aligned with `combos()`."""
    return [CANONICAL_TEMPLATE.format(color=c, shape=s) for s, c in combos()]


def caption_words() -> list[str]:
    """Every word any caption can contain (the demo tokenizer's vocabulary)."""
    words = {w for t in _TEMPLATES for w in t.replace("{color}", "").replace("{shape}", "").split()}
    return sorted(words | set(SHAPES) | set(COLORS))


def captions(shape: str, color: str, rng: np.random.Generator) -> str:
    """A caption for (shape, colour) in one of several phrasings, chosen by `rng`."""
    _check(shape, color)
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(color=color, shape=shape)


def generate(n: int, seed: int, size: int = 224) -> Iterator[ShapeSample]:
    """`n` samples, deterministic in `seed`; each run of 24 covers every combo once.

    Balanced blocks make per-class accuracy meaningful for small n. A prefix of a longer run
    equals a shorter run with the same seed, since samples draw from one stream in order.
    """
    rng = np.random.default_rng(seed)
    all_combos = combos()
    order: list[int] = []
    for i in range(n):
        if i % len(all_combos) == 0:
            order = [int(k) for k in rng.permutation(len(all_combos))]
        shape, color = all_combos[order[i % len(all_combos)]]
        yield ShapeSample(shape, color, render(shape, color, rng, size=size))


def render(shape: str, color: str, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """One `size`×`size` RGB image of a `color` `shape` on a random background."""
    _check(shape, color)
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    target_rgb = _RGB[color]
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = Image.fromarray(_background(kind, target_rgb, rng, size), "RGB")
    draw = ImageDraw.Draw(image)

    radius = float(rng.uniform(*_TARGET_RADIUS)) * size
    cx = float(rng.uniform(radius, size - radius))
    cy = float(rng.uniform(radius, size - radius))
    if rng.random() < _DISTRACTOR_PROB:
        _draw_distractors(draw, shape, color, (cx, cy, radius), rng, size)
    _draw_shape(
        draw, shape, (cx, cy, radius), float(rng.uniform(0, 2 * math.pi)), _jitter(target_rgb, rng)
    )
    return image


def _check(shape: str, color: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    # Mostly a brightness shift; the small per-channel part must not tint black or white.
    wobble = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1) + rng.integers(
        -_HUE_JITTER, _HUE_JITTER + 1, size=3
    )
    r, g, b = (int(np.clip(v + d, 0, 255)) for v, d in zip(rgb, wobble, strict=True))
    return (r, g, b)


def _distance(a: NDArray[np.float64], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(a - np.asarray(b, dtype=np.float64)))


def _segment_distance(
    start: NDArray[np.float64], end: NDArray[np.float64], point: tuple[int, int, int]
) -> float:
    """Distance from `point` to the closest colour on the blend from `start` to `end`."""
    p = np.asarray(point, dtype=np.float64)
    span = end - start
    length2 = float(span @ span)
    t = 0.0 if length2 == 0 else min(1.0, max(0.0, float((p - start) @ span) / length2))
    return _distance(start + span * t, point)


def _muted_color(
    target: tuple[int, int, int], rng: np.random.Generator, margin: float
) -> NDArray[np.float64]:
    """A grey-ish tint at least `margin` from `target`; rejection sampling, always terminates.

    Every named colour has a valid grey at one end of the scale (black or white), so the
    fallback below is reachable only by extreme bad luck.
    """
    for _ in range(100):
        grey = float(rng.uniform(0, 255))
        hue = rng.uniform(0, 255, size=3)
        mix = float(rng.uniform(0, _MAX_BG_SATURATION))
        candidate = grey * (1 - mix) + hue * mix
        if _distance(candidate, target) >= margin:
            return candidate
    far = 0.0 if sum(target) > 3 * 127 else 255.0
    return np.full(3, far)


def _background(
    kind: str, target: tuple[int, int, int], rng: np.random.Generator, size: int
) -> NDArray[np.uint8]:
    if kind == "solid":
        base = _muted_color(target, rng, _MIN_CONTRAST)
        return np.broadcast_to(base.round().astype(np.uint8), (size, size, 3)).copy()
    if kind == "gradient":
        return _gradient(target, rng, size)
    base = _muted_color(target, rng, _NOISE_MARGIN)
    cells = int(rng.integers(3, 9))  # blob scale: a few large patches, not grain
    coarse = base + rng.uniform(-_NOISE_BLOB, _NOISE_BLOB, size=(cells, cells, 3))
    # Pillow's bilinear upsampling of the coarse grid gives smooth blobs cheaply.
    blobs = Image.fromarray(np.clip(coarse, 0, 255).round().astype(np.uint8), "RGB")
    smooth = np.asarray(blobs.resize((size, size), Image.Resampling.BILINEAR), dtype=np.int16)
    grain = rng.integers(-_NOISE_GRAIN, _NOISE_GRAIN + 1, size=(size, size, 3), dtype=np.int16)
    noisy: NDArray[np.uint8] = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    return noisy


def _gradient(
    target: tuple[int, int, int], rng: np.random.Generator, size: int
) -> NDArray[np.uint8]:
    """A linear blend of two tints; every point on the blend keeps the contrast margin."""
    start = _muted_color(target, rng, _MIN_CONTRAST)
    end = start
    for _ in range(50):
        candidate = _muted_color(target, rng, _MIN_CONTRAST)
        # A straight blend between two far colours can pass close to the target: check it all.
        if _segment_distance(start, candidate, target) >= _MIN_CONTRAST:
            end = candidate
            break
    angle = float(rng.uniform(0, 2 * math.pi))
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    proj = axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle)
    proj = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    start32, step32 = start.astype(np.float32), (end - start).astype(np.float32)
    blend = start32 + step32 * proj[..., None]
    out: NDArray[np.uint8] = np.clip(blend, 0, 255).round().astype(np.uint8)
    return out


def _polygon(
    shape: str, cx: float, cy: float, radius: float, angle: float
) -> list[tuple[float, float]]:
    if shape == "square":
        radii, count = [radius], 4
    elif shape == "triangle":
        radii, count = [radius], 3
    else:  # star: alternating outer and inner vertices
        radii, count = [radius, radius * _STAR_INNER], 10
    return [
        (
            cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / count),
            cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / count),
        )
        for k in range(count)
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    circle: tuple[float, float, float],
    angle: float,
    rgb: tuple[int, int, int],
) -> None:
    cx, cy, radius = circle
    if shape == "circle":
        # A circle's area is ~1.5× a square's of equal circumradius; shrink it so size alone
        # does not hint at the shape.
        r = radius * 0.85
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, angle), fill=rgb)


def _draw_distractors(
    draw: ImageDraw.ImageDraw,
    shape: str,
    color: str,
    target: tuple[float, float, float],
    rng: np.random.Generator,
    size: int,
) -> None:
    """Up to _MAX_DISTRACTORS small shapes sharing neither shape nor colour with the target."""
    _, _, tr = target
    other_shapes = [s for s in SHAPES if s != shape]
    other_colors = [c for c in COLORS if c != color]
    placed: list[tuple[float, float, float]] = [target]
    for _ in range(int(rng.integers(1, _MAX_DISTRACTORS + 1))):
        d_shape = other_shapes[int(rng.integers(len(other_shapes)))]
        d_color = other_colors[int(rng.integers(len(other_colors)))]
        r = float(rng.uniform(*_DISTRACTOR_RADIUS)) * tr
        angle = float(rng.uniform(0, 2 * math.pi))
        for _try in range(10):  # no free spot after 10 tries: skip this distractor
            x = float(rng.uniform(r, size - r))
            y = float(rng.uniform(r, size - r))
            if all(math.hypot(x - px, y - py) > r + pr + 2 for px, py, pr in placed):
                _draw_shape(draw, d_shape, (x, y, r), angle, _jitter(_RGB[d_color], rng))
                placed.append((x, y, r))
                break
