"""Untrusted image bytes → the uint8 (S, S, 3) RGB array CLIP's graph takes (it normalizes).

It follows transformers' `CLIPImageProcessor` (5.x; torchvision backend by default, PIL when
torchvision is missing): convert to RGB, resize the shortest side to `resize_shortest_edge` with
bicubic (long side `int(edge * long / short)`), center-crop S×S at `floor((side - S) / 2)`; a
side shorter than S is zero-padded, smaller half first, as the torchvision backend does. Only
the crop window is resampled (Pillow's `box`), which bounds work and memory on extreme aspect
ratios and differs from resize-then-crop by a level or two. Where we choose:

- Transparency (an "A" band, or a `transparency` entry: palette, grey or RGB tRNS) is
  composited on white, as the processor's `convert_to_rgb` does with a PIL image.
  (`transformers.image_utils.load_image` would drop alpha instead; we follow the processor.)
- EXIF orientation is applied, as `load_image` does (on the drafted image for JPEGs).
- 16-bit and 32-bit grey (modes I;16*, I, F) are scaled to 8 bits (65535 → 255); Pillow's own
  conversion, which the processor uses, clips everything above 255 to white.
- JPEGs are decoded with `Image.draft` (DCT downscale by 2, 4 or 8), never below the resize
  target: 2× the throughput at 1024×768, 7× at 4000×3000, a few levels of difference.
- Only frame 0 of animations is read; frame counts are never asked for.
- Plain 8-bit RGB PNGs are decoded by libspng (`moderator.pipeline.decode.png`) rather than Pillow:
  the same pixels (PNG is lossless) in ~60 % of the time.

Every failure is a typed `DecodeError` (or `TooLarge`) whose message says what was wrong.
The parity test (tests/unit/pipeline/decode/test_decode_cpu.py) holds these choices to cosine
>= 0.999 against the processor's tensors, >= 0.9999 where no JPEG draft is involved.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from moderator.cpu import Tally
from moderator.errors import (
    ConfigError,
    DecodeError,
    DecompressionBomb,
    TooLarge,
    UnsupportedFormat,
)
from moderator.pipeline.decode.png import PNG_MAGIC, decode_plain_rgb_png

__all__ = ["PREPROCESS_VERSION", "PreprocessSpec", "decode_image", "image_format"]

DEFAULT_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

# What Pillow raises on hostile input varies by plugin; all of it means "unusable image".
# MemoryError: a header that passed the pixel guard can still ask for more than we have.
_PILLOW_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ArithmeticError,
    MemoryError,
)

_WHITE: Final = (255, 255, 255, 255)

# EXIF orientation → the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES: Final = frozenset(
    {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
    }
)
_EXIF_ORIENTATION_TAG: Final = 0x0112

# Modes whose samples are wider than 8 bits; they get scaled, not clipped (see module doc).
_WIDE_GREY: Final = frozenset(
    {"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS", "I;16NS"}
)


PREPROCESS_VERSION: Final = 1
"""Names what `decode_image` makes of a given image under a given `PreprocessSpec`.

Image embeddings are cached under it (`moderator.cache.keys.image_namespace`), so bump it
whenever a change to decoding, resizing, cropping, compositing or normalisation changes any
output pixel: vectors from the old pixels then stop being served to the new code."""


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """What the model takes, and the limits that keep a hostile image cheap to refuse."""

    image_size: int  # crop size S
    resize_shortest_edge: int
    max_bytes: int = 20 * 1024 * 1024
    # Checked against the header before any pixel is decoded. Pillow refuses on its own
    # above 2 × Image.MAX_IMAGE_PIXELS (~179 M by default), so larger values have no effect.
    max_pixels: int = 50_000_000
    allowed_formats: frozenset[str] = field(default=DEFAULT_FORMATS)

    def __post_init__(self) -> None:
        for name in ("image_size", "resize_shortest_edge", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        formats = frozenset(f.upper() for f in self.allowed_formats)
        if not formats:
            raise ConfigError("allowed_formats is empty: no image could ever be decoded")
        Image.init()  # registers every plugin, so Image.OPEN lists what this Pillow can read
        unknown = sorted(formats - Image.OPEN.keys())
        if unknown:
            raise ConfigError(
                f"allowed_formats has formats this Pillow cannot read: {', '.join(unknown)}"
            )
        object.__setattr__(self, "allowed_formats", formats)

    @classmethod
    def for_model(cls, image_size: int, resize_shortest_edge: int) -> PreprocessSpec:
        return cls(image_size=image_size, resize_shortest_edge=resize_shortest_edge)


def decode_image(
    data: bytes, spec: PreprocessSpec, tally: Tally | None = None
) -> NDArray[np.uint8]:
    """Decode and preprocess one image; C-contiguous, writable (S, S, 3) RGB uint8. `tally`,
    when given, is charged the CPU of decoding (`decode`) and of resizing (`resize`).

    Raises TooLarge, UnsupportedFormat, DecompressionBomb or DecodeError.
    """
    if not data:
        raise DecodeError("image is empty (0 bytes)")
    if len(data) > spec.max_bytes:
        raise TooLarge(f"image is {len(data)} bytes, over the {spec.max_bytes}-byte limit")
    # Pillow warns about the input it is given: UserWarnings for damaged metadata (the pixels
    # are still fine), DecompressionBombWarning between 1× and 2× MAX_IMAGE_PIXELS (our own
    # limit decides). Neither is news to anyone, so both are silenced here, not in Pillow's
    # globals. catch_warnings swaps process-wide filter state: fine in single-threaded workers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            if (fast := _plain_png(data, spec, tally)) is not None:
                return fast
            with _open(data, spec) as im:
                return _preprocess(im, spec, tally)
        except Image.DecompressionBombError as exc:
            raise DecompressionBomb(f"image is over Pillow's pixel limit: {exc}") from exc
        except _PILLOW_ERRORS as exc:
            fmt = image_format(data) or "image"
            detail = str(exc) or type(exc).__name__
            raise DecodeError(f"{fmt} data could not be decoded: {detail}") from exc


# Leading bytes of formats Pillow can name; WebP and the ISO-BMFF ones are matched in code.
_MAGIC: Final = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
)


def image_format(data: bytes) -> str | None:
    """Pillow's name for the image format the leading bytes announce, or None.

    A cheap sniff for messages and metrics; it does not validate anything after the header.
    """
    head = data[:16]
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
    return None


def _open(data: bytes, spec: PreprocessSpec) -> Image.Image:
    """Parse the header with allowlisted plugins only, then apply the size guards."""
    try:
        # `formats` keeps every other plugin's parser away from untrusted bytes.
        im = Image.open(io.BytesIO(data), formats=sorted(spec.allowed_formats))
    except UnidentifiedImageError as exc:
        raise _unidentified(data, spec) from exc
    width, height = im.size
    if width < 1 or height < 1:
        im.close()
        raise DecodeError(f"{im.format} image has a zero dimension ({width}x{height})")
    if width * height > spec.max_pixels:
        im.close()
        raise DecompressionBomb(
            f"{im.format} image declares {width}x{height} = {width * height} pixels,"
            f" over the {spec.max_pixels}-pixel limit"
        )
    return im


def _unidentified(data: bytes, spec: PreprocessSpec) -> DecodeError:
    """Say why no allowlisted plugin accepted the bytes."""
    fmt = image_format(data)
    if fmt in spec.allowed_formats:
        return DecodeError(f"{fmt} header is corrupt or truncated")
    allowed = ", ".join(sorted(spec.allowed_formats))
    if fmt is not None:
        return UnsupportedFormat(f"image format {fmt} is not allowed (allowed: {allowed})")
    return UnsupportedFormat(f"not an image in an allowed format ({allowed}): {_describe(data)}")


def _describe(data: bytes) -> str:
    """A few words on what non-image bytes look like, for the DLQ detail."""
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf-"):
        return "the bytes are a PDF document"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "the bytes are SVG, a vector format we do not rasterize"
    if text.startswith((b"<!doctype html", b"<html")):
        return "the bytes are an HTML page"
    if text.startswith(b"<?xml"):
        return "the bytes are XML text"
    try:
        data[:256].decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognized bytes starting {data[:8].hex(' ')}"
    return "the bytes are text"


def _plain_png(data: bytes, spec: PreprocessSpec, tally: Tally | None) -> NDArray[np.uint8] | None:
    """A plain RGB PNG decoded by libspng (`moderator.pipeline.decode.png`), or None for Pillow."""
    if "PNG" not in spec.allowed_formats or not data.startswith(PNG_MAGIC):
        return None
    limit = spec.max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:  # Pillow's own bomb error starts above twice it
        limit = min(limit, 2 * Image.MAX_IMAGE_PIXELS)
    rgb = decode_plain_rgb_png(data, limit)
    if rgb is None:
        return None
    height, width = rgb.shape[:2]
    target = _resize_size((width, height), spec.resize_shortest_edge)
    if tally is not None:
        tally.lap("decode")
    out = _finish(Image.fromarray(rgb), (float(width), float(height)), target, spec)
    if tally is not None:
        tally.lap("resize")
    return out


def _preprocess(im: Image.Image, spec: PreprocessSpec, tally: Tally | None) -> NDArray[np.uint8]:
    target = _resize_size(im.size, spec.resize_shortest_edge)  # from the full, stored size
    extent = (float(im.width), float(im.height))  # the full image, in current pixel units
    if im.format in ("JPEG", "MPO"):
        # Decode at 1/2, 1/4 or 1/8 scale in the DCT; the drafted size stays >= target.
        drafted = im.draft(None, target)
        if drafted is not None:
            extent = (drafted[1][2], drafted[1][3])  # e.g. 1023 px at 1/2 → 511.5, not 512
    im.load()
    # A GIF frame may grow the canvas past the header's size while loading.
    if im.width * im.height > spec.max_pixels:
        raise DecompressionBomb(
            f"{im.format} frame is {im.width}x{im.height}, over the {spec.max_pixels}-pixel limit"
        )
    pixels = _to_rgb_or_grey(im)
    method = _ORIENTATION.get(_orientation(im))
    if method is not None:
        # Before the resize, as the processor sees it (load_image transposes first); cheap
        # on a drafted JPEG, and phone photos, where orientation tags live, are JPEGs.
        pixels = pixels.transpose(method)
        if method in _SWAPS_AXES:
            target = (target[1], target[0])
            extent = (extent[1], extent[0])
    if tally is not None:
        tally.lap("decode")
    out = _finish(pixels, extent, target, spec)
    if tally is not None:
        tally.lap("resize")
    return out


def _finish(
    pixels: Image.Image, extent: tuple[float, float], target: tuple[int, int], spec: PreprocessSpec
) -> NDArray[np.uint8]:
    """Decoded RGB or L pixels → the S×S RGB array: resize, crop, then grey to RGB."""
    pixels = _resize_crop(pixels, extent, target, spec.image_size)
    if pixels.mode == "L":
        pixels = pixels.convert("RGB")  # after the resize: grey needs a third of the work
    out = np.array(pixels, dtype=np.uint8)
    if out.shape != (spec.image_size, spec.image_size, 3):  # a Pillow surprise, never expected
        raise DecodeError(f"preprocessing produced shape {out.shape}, not an RGB image")
    return out


def _resize_crop(
    im: Image.Image, extent: tuple[float, float], target: tuple[int, int], size: int
) -> Image.Image:
    """The S×S center crop of `im` resized to `target`, resampling only what the crop keeps.

    Each output pixel gets the filter window it has in a whole-image resize; Pillow rounds
    box edges to float32 and may run the two passes in the other order, so a pixel can
    differ by a level or two (more on hard edges). In exchange, nothing is computed for the
    cut-off part: 25-30% of the resize for a 4:3 photo, and for a 2×30000 strip 224×3.4 M
    pixels (2 GB). `extent` is the full image in `im`'s pixels, fractional after a draft.
    """
    width, height = target
    left, top = _crop_start(width, size), _crop_start(height, size)
    if extent == (float(width), float(height)):  # nothing to resample
        return im.crop((left, top, left + size, top + size))  # zero-fills past the edges
    # The part of the resized image inside the crop (all of it, unless S > a resized side).
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size, width), min(top + size, height)
    box = (
        x0 * extent[0] / width,
        y0 * extent[1] / height,
        min(x1 * extent[0] / width, im.width),
        min(y1 * extent[1] / height, im.height),
    )
    part = im.resize((x1 - x0, y1 - y0), Image.Resampling.BICUBIC, box=box)
    if part.size == (size, size):
        return part
    canvas = Image.new(part.mode, (size, size))  # zeros, as torchvision pads
    canvas.paste(part, (x0 - left, y0 - top))
    return canvas


def _resize_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """(width, height) with the short side at `edge`, the long side truncated like HF's."""
    width, height = size
    if width <= height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


def _to_rgb_or_grey(im: Image.Image) -> Image.Image:
    """RGB (or L, which converts losslessly after resizing) with transparency on white."""
    if im.mode in _WIDE_GREY:
        return _wide_grey_to_l(im)
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if im.mode in ("RGB", "L"):
        return im
    return im.convert("RGB")


def _wide_grey_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit grey to 8 bits by scaling, not clipping.

    I;16* and I (older Pillow opened 16-bit PNGs as I) span 0..65535; F is taken as 0..1,
    the usual range of float TIFFs. Values outside saturate.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        scaled = np.nan_to_num(arr, nan=0.0) * 255.0
    else:
        scaled = arr.astype(np.float32) * (255.0 / 65535.0)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    transparency = im.info.get("transparency")
    if isinstance(transparency, int):  # a 16-bit tRNS key: those pixels are see-through
        grey[arr == transparency] = 255
    return Image.fromarray(grey)


def _orientation(im: Image.Image) -> int:
    """EXIF (or XMP) orientation 1-8; a malformed block counts as upright, not as corrupt."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except _PILLOW_ERRORS:
        return 1
    return value if isinstance(value, int) else 1


def _crop_start(side: int, size: int) -> int:
    """Torchvision's offsets: floor((side - S) / 2); padding puts the smaller half first."""
    if side >= size:
        return (side - size) // 2
    return -((size - side) // 2)
