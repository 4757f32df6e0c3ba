"""Plain 8-bit RGB PNGs decoded by libspng (pyspng) instead of Pillow.

Why: PNG is the costliest image the CPU decodes (a 1024×768 photo: ~17 ms in Pillow, ~10 ms
in libspng on this project's CPU), and with GPU JPEG decoding it is the only one left on the
CPU. PNG is lossless, so both give the same pixels; the rest of the path (resize, crop) is
`moderator.decode`'s.

Only PNGs whose pixels Pillow would hand over unchanged take this path: 8-bit RGB, not
interlaced, no transparency (tRNS), not animated (acTL), and nowhere Pillow finds an
orientation (an eXIf chunk, or the text chunks ImageMagick and Adobe write EXIF and XMP
into). Anything else, and anything libspng refuses, returns None and goes through Pillow,
whose errors name what is wrong.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

try:
    import pyspng as _spng
except ImportError:  # optional: Pillow decodes every PNG without it
    _spng = None

__all__ = ["PNG_MAGIC", "decode_plain_rgb_png", "plain_rgb_size"]

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_RGB: Final = 2  # IHDR colour type: truecolour, no alpha
_CHUNK: Final = struct.Struct(">I4s")
# Chunks after which Pillow's pixels or orientation would differ from libspng's plain decode.
_REFUSED: Final = frozenset({b"tRNS", b"eXIf", b"acTL"})
_TEXT: Final = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Text keywords Pillow's getexif() reads an orientation from.
_ORIENTATION_KEYWORDS: Final = frozenset({b"Raw profile type exif", b"XML:com.adobe.xmp"})


def plain_rgb_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) when `data` is a PNG for this path, else None. Reads chunk headers
    only (and the keyword of text chunks), up to IEND."""
    if len(data) < 33 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 8 or colour != _RGB or interlace or not 0 < width * height <= max_pixels:
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = _CHUNK.unpack_from(data, pos)
        if kind in _REFUSED:
            return None
        if kind in _TEXT:
            keyword = data[pos + 8 : pos + 8 + min(length, 80)].split(b"\0", 1)[0]
            if keyword in _ORIENTATION_KEYWORDS:
                return None
        if kind == b"IEND":
            return width, height
        pos += 12 + length
    return None  # no IEND: truncated, let Pillow say so


def decode_plain_rgb_png(data: bytes, max_pixels: int) -> NDArray[np.uint8] | None:
    """The full-size (height, width, 3) uint8 pixels of a plain RGB PNG, or None when this
    path does not apply (see the module docstring) or libspng cannot decode it."""
    if _spng is None:
        return None
    size = plain_rgb_size(data, max_pixels)
    if size is None:
        return None
    width, height = size
    try:
        rgb: Any = _spng.load(data)
    except Exception:  # libspng's error types are its own; Pillow reports the damage
        return None
    if not isinstance(rgb, np.ndarray) or rgb.shape != (height, width, 3):
        return None
    if rgb.dtype != np.uint8:
        return None
    return rgb
