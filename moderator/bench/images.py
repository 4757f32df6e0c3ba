"""Photo-like test images for the benchmarks: what a moderation service is really sent.

Decode cost depends on content, not just size: a flat synthetic image compresses to a few KB
and decodes several times faster than a photo. These images mix the ingredients that make
photos expensive: smooth lighting gradients, soft blobs of colour, hard-edged objects, mid-scale
texture and per-pixel sensor noise. At 1024×768 and JPEG quality 90 they land at ~150-250 KB,
the size of a typical phone photo downscaled by an upload path; as PNG (lossless, so the noise
stays) they are ~1.5 MB. Everything is drawn from one seeded generator: same seed, same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["BenchImage", "bench_images", "encode", "photo_like"]

WIDTH: Final = 1024
HEIGHT: Final = 768
JPEG_QUALITY: Final = 90  # what most upload pipelines re-encode at
PNG_FRACTION: Final = 0.2
# Per-pixel noise (standard deviation, 0..255 levels): sensor grain of an indoor phone photo.
# It dominates the JPEG size: 2 → ~120 KB, 3 → ~190 KB, 5 → ~320 KB at 1024×768, q90.
_GRAIN_SIGMA: Final = 3.0
_OBJECTS: Final = (8, 24)  # hard-edged shapes per image (min, max)
_BLOBS: Final = (4, 10)  # soft, blurred colour patches per image


@dataclass(frozen=True, slots=True)
class BenchImage:
    """One encoded image and what it is."""

    data: bytes
    format: str  # "JPEG" or "PNG", Pillow's names
    width: int
    height: int


def photo_like(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """An RGB image with a photo's statistics (not its meaning), drawn from `rng`."""
    base = _lighting(rng, width, height)
    image = Image.fromarray(base, "RGB")
    _soft_blobs(image, rng)
    _objects(image, rng)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += _texture(rng, width, height)
    # Grain: mostly luminance, a little colour noise, as sensors give after demosaicing.
    pixels += rng.standard_normal((height, width, 1), dtype=np.float32) * _GRAIN_SIGMA
    pixels += rng.standard_normal((height, width, 3), dtype=np.float32) * (_GRAIN_SIGMA / 2)
    np.clip(pixels, 0, 255, out=pixels)
    out: NDArray[np.uint8] = pixels.astype(np.uint8)
    return Image.fromarray(out, "RGB")


def encode(image: Image.Image, fmt: str, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG at `quality` (4:2:0, as cameras and browsers write it), or PNG at Pillow's default."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    elif fmt == "PNG":
        image.save(buffer, format="PNG")  # zlib level 6, what most encoders default to
    else:
        raise ValueError(f"format must be JPEG or PNG, got {fmt!r}")
    return buffer.getvalue()


def bench_images(
    n: int,
    *,
    seed: int = 0,
    width: int = WIDTH,
    height: int = HEIGHT,
    png_fraction: float = PNG_FRACTION,
    quality: int = JPEG_QUALITY,
) -> list[BenchImage]:
    """`n` distinct images, round(n × png_fraction) of them PNG at seeded positions."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= png_fraction <= 1.0:
        raise ValueError(f"png_fraction must be within [0, 1], got {png_fraction}")
    rng = np.random.default_rng(seed)
    pngs = set(rng.permutation(n)[: round(n * png_fraction)].tolist())
    images = []
    for i in range(n):
        fmt = "PNG" if i in pngs else "JPEG"
        data = encode(photo_like(rng, width, height), fmt, quality)
        images.append(BenchImage(data, fmt, width, height))
    return images


def _lighting(rng: np.random.Generator, width: int, height: int) -> NDArray[np.uint8]:
    """A smooth colour field: a few colour regions blended by bicubic upsampling, lit from
    one side (photos are rarely evenly lit)."""
    cells = (int(rng.integers(2, 6)), int(rng.integers(2, 5)))
    palette = rng.uniform(30, 225, size=(cells[1], cells[0], 3))
    grid = Image.fromarray(palette.astype(np.uint8), "RGB")
    field = np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    angle = float(rng.uniform(0, 2 * math.pi))
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)
    light = 1.0 + float(rng.uniform(0.2, 0.6)) * (
        xs[None, :] * math.cos(angle) + ys[:, None] * math.sin(angle)
    )
    lit: NDArray[np.uint8] = np.clip(field * light[..., None], 0, 255).astype(np.uint8)
    return lit


def _soft_blobs(image: Image.Image, rng: np.random.Generator) -> None:
    """Out-of-focus patches: ellipses drawn at 1/4 scale, blurred, and blended in."""
    width, height = image.size
    small = (width // 4, height // 4)
    layer = Image.new("RGBA", small, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(*_BLOBS))):
        cx, cy = rng.uniform(0, small[0]), rng.uniform(0, small[1])
        rx, ry = rng.uniform(0.04, 0.33) * small[0], rng.uniform(0.05, 0.33) * small[1]
        colour = (*rng.integers(0, 256, 3).tolist(), int(rng.integers(60, 160)))
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(colour))
    blurred = layer.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(4, 10))))
    full = blurred.resize((width, height), Image.Resampling.BILINEAR)
    image.paste(full, (0, 0), full)  # the layer's own alpha is the blend mask


def _objects(image: Image.Image, rng: np.random.Generator) -> None:
    """Hard-edged things (furniture, signs, limbs): polygons, rectangles and ellipses with
    some shading, the edges JPEG spends its bits on."""
    width, height = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(*_OBJECTS))):
        kind = int(rng.integers(3))
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        size = float(rng.uniform(0.02, 0.2)) * min(width, height)
        colour = tuple(rng.integers(0, 256, 3).tolist())
        outline = tuple(max(0, c - 60) for c in colour)
        box = (cx - size, cy - size * float(rng.uniform(0.4, 1.0)), cx + size, cy + size)
        if kind == 0:
            draw.rectangle(box, fill=colour, outline=outline, width=2)
        elif kind == 1:
            draw.ellipse(box, fill=colour, outline=outline, width=2)
        else:
            corners = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
            radii = rng.uniform(0.5, 1.0, corners) * size
            points = [
                (cx + r * math.cos(a), cy + r * math.sin(a))
                for a, r in zip(angles.tolist(), radii.tolist(), strict=True)
            ]
            draw.polygon(points, fill=colour, outline=outline)


def _texture(rng: np.random.Generator, width: int, height: int) -> NDArray[np.float32]:
    """Mid-frequency detail (fabric, foliage, grain of a wall): coarse noise upsampled to a
    few-pixel scale, plus a faint oriented pattern; ±~12 levels, broadcast to all channels."""
    coarse = rng.standard_normal((height // 4, width // 4), dtype=np.float32)
    grid = Image.fromarray(coarse, "F").resize((width, height), Image.Resampling.BILINEAR)
    detail = np.asarray(grid, dtype=np.float32) * float(rng.uniform(4, 9))
    angle = float(rng.uniform(0, math.pi))
    period = float(rng.uniform(6, 24))
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    wave = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period))
    detail += wave * float(rng.uniform(1, 4))
    return detail[..., None]
