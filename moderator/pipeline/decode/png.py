"""Plain 8-bit RGB PNGs decoded by libspng (pyspng) instead of Pillow.

Why: PNG is the costliest image the CPU decodes (a 1024×768 photo: ~17 ms in Pillow, ~10 ms
in libspng on this project's CPU), and with GPU JPEG decoding it is the only one left on the
CPU. PNG is lossless, so both give the same pixels; the rest of the path (resize, crop) is
`moderator.pipeline.decode.cpu`'s.

Only PNGs whose pixels Pillow would hand over unchanged take this path: 8-bit RGB, not
interlaced, with no chunks but IDAT, a few fixed-size ancillary ones and short text that
holds no orientation (`plain_rgb_size`), all with correct CRCs. Anything else (transparency,
EXIF, animation, ICC profiles, damage), and anything libspng refuses, returns None and goes
through Pillow, whose errors name what is wrong.
"""

from __future__ import annotations

import struct
import zlib
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
# The ancillary chunks allowed on this path, by their fixed lengths: Pillow reads them without
# touching the pixels (gamma, chromaticities, sRGB intent, pixel size). Any other chunk but
# IDAT, IEND and short tEXt sends the PNG to Pillow, whose checks then apply: transparency,
# orientation (eXIf, EXIF or XMP text), animation, ICC profiles, compressed text and its
# size limits, unknown or malformed chunks.
_FIXED_LENGTH: Final = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"IEND": 0}
_MAX_TEXT: Final = 1 << 16  # far below Pillow's text limits
# Text keywords Pillow's getexif() reads an orientation from.
_ORIENTATION_KEYWORDS: Final = frozenset({b"Raw profile type exif", b"XML:com.adobe.xmp"})


def plain_rgb_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) when `data` is a PNG for this path, else None.

    Walks the chunk headers up to IEND and checks the CRC of every chunk but IDAT (Pillow
    checks those it parses, not the pixel data's). libspng ignores CRCs and the zlib
    checksum, so the one damage this path lets through is a wrong Adler-32 after pixel data
    that inflates in full; Pillow refuses that image.
    """
    if len(data) < 33 or not data.startswith(PNG_MAGIC) or data[8:16] != b"\0\0\0\rIHDR":
        return None
    width, height, depth, colour, method, filtering, interlace = struct.unpack(
        ">IIBBBBB", data[16:29]
    )
    if (depth, colour, method, filtering, interlace) != (8, _RGB, 0, 0, 0):
        return None
    if not 0 < width * height <= max_pixels:
        return None
    pos = 8
    seen_idat = False
    while pos + 12 <= len(data):
        length, kind = _CHUNK.unpack_from(data, pos)
        end = pos + 12 + length
        if end > len(data):
            return None  # truncated: let Pillow say so
        if kind == b"IDAT":
            seen_idat = True
        else:
            body = data[pos + 4 : pos + 8 + length]
            if zlib.crc32(body) != int.from_bytes(data[end - 4 : end], "big"):
                return None
            if pos > 8 and not _allowed(kind, length, body[4:]):
                return None
            if kind == b"IEND":
                return (width, height) if seen_idat else None
        pos = end
    return None  # no IEND


def _allowed(kind: bytes, length: int, body: bytes) -> bool:
    """Whether an ancillary chunk (or IEND) may stay on this path."""
    if kind in _FIXED_LENGTH:
        return length == _FIXED_LENGTH[kind]
    if kind == b"tEXt":
        return length <= _MAX_TEXT and body.split(b"\0", 1)[0] not in _ORIENTATION_KEYWORDS
    return False


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
