"""Plain RGB PNGs through libspng: which PNGs take that path, and that they come out as
Pillow's path would have made them."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from moderator.errors import DecodeError, DecompressionBomb
from moderator.pipeline.decode import png as decode_png
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image
from moderator.pipeline.decode.png import decode_plain_rgb_png, plain_rgb_size

SPEC = PreprocessSpec.for_model(224, 224)
LIMIT = SPEC.max_pixels


def _rgb(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _png(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _interlaced(data: bytes) -> bytes:
    """The IHDR's interlace flag set, its CRC redone (Pillow writes no interlaced PNGs)."""
    out = bytearray(data)
    out[28] = 1
    out[29:33] = zlib.crc32(bytes(out[12:29])).to_bytes(4, "big")
    return bytes(out)


def _chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")


def _with_chunk(chunk: bytes) -> bytes:
    """A plain 320×240 PNG with `chunk` inserted right after IHDR."""
    data = _png(Image.fromarray(_rgb()))
    return data[:33] + chunk + data[33:]


def _black() -> Image.Image:
    return Image.new("RGB", (320, 240))


def _with_text(keyword: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(keyword, "x", zip=keyword.startswith("Raw"))
    return _png(Image.fromarray(_rgb()), pnginfo=info)


def test_a_plain_rgb_png_decodes_to_pillows_pixels() -> None:
    rgb = _rgb()
    data = _png(Image.fromarray(rgb))
    assert plain_rgb_size(data, LIMIT) == (320, 240)
    if decode_png._spng is None:
        pytest.skip("pyspng is not installed")
    got = decode_plain_rgb_png(data, LIMIT)
    assert got is not None
    np.testing.assert_array_equal(got, rgb)


def test_decode_image_gives_the_same_array_with_or_without_libspng(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _png(Image.fromarray(_rgb(1024, 768, seed=3)))
    fast = decode_image(data, SPEC)
    monkeypatch.setattr(decode_png, "_spng", None)
    assert decode_plain_rgb_png(data, LIMIT) is None
    np.testing.assert_array_equal(fast, decode_image(data, SPEC))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("RGBA", _png(Image.fromarray(_rgb()).convert("RGBA"))),
        ("grey", _png(Image.fromarray(_rgb()).convert("L"))),
        ("palette", _png(Image.fromarray(_rgb()).convert("P"))),
        ("16-bit grey", _png(Image.fromarray(_rgb()[..., 0].astype(np.uint16) * 257))),
        ("interlaced", _interlaced(_png(Image.fromarray(_rgb())))),
        ("tRNS colour key", _png(Image.fromarray(_rgb()), transparency=(0, 0, 0))),
        ("eXIf chunk", _png(Image.fromarray(_rgb()), exif=Image.Exif().tobytes())),
        ("EXIF in a text chunk", _with_text("Raw profile type exif")),
        ("XMP in a text chunk", _with_text("XML:com.adobe.xmp")),
        ("animated", _png(Image.fromarray(_rgb()), save_all=True, append_images=[_black()])),
        ("no IEND", _png(Image.fromarray(_rgb()))[:-12]),
        ("ICC profile", _with_chunk(_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"profile")))),
        ("frame control without acTL", _with_chunk(_chunk(b"fcTL", bytes(26)))),
        ("compressed text", _with_chunk(_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"x")))),
        ("short gAMA", _with_chunk(_chunk(b"gAMA", b"\0\0"))),
        ("bad CRC on a text chunk", _with_chunk(_chunk(b"tEXt", b"Comment\0hi", crc=0))),
        ("unknown chunk", _with_chunk(_chunk(b"abcd", b"x"))),
        ("not a PNG", b"\xff\xd8\xff" + b"\x00" * 64),
    ],
)
def test_only_pngs_whose_pixels_pillow_passes_through_take_the_path(name: str, data: bytes) -> None:
    assert plain_rgb_size(data, LIMIT) is None, name


def test_ordinary_text_and_colour_chunks_do_not_keep_a_png_off_the_path() -> None:
    assert plain_rgb_size(_with_text("Software"), LIMIT) == (320, 240)
    gamma = _chunk(b"gAMA", (45455).to_bytes(4, "big"))
    assert plain_rgb_size(_with_chunk(gamma + _chunk(b"sRGB", b"\0")), LIMIT) == (320, 240)


def test_pillows_own_bomb_limit_still_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png(Image.fromarray(_rgb()))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 320 * 240 // 4)  # 2× it < the image
    with pytest.raises(DecompressionBomb):
        decode_image(data, SPEC)


def test_the_pixel_limit_is_read_from_the_header() -> None:
    data = _png(Image.fromarray(_rgb()))
    assert plain_rgb_size(data, 320 * 240) == (320, 240)
    assert plain_rgb_size(data, 320 * 240 - 1) is None


def test_damaged_pixel_data_still_fails_with_pillows_decode_error() -> None:
    rgb = _rgb()
    data = bytearray(_png(Image.fromarray(rgb)))
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 60] = bytes(50)  # inside the deflate stream
    assert plain_rgb_size(bytes(data), LIMIT) == (320, 240)  # the header is fine
    assert decode_plain_rgb_png(bytes(data), LIMIT) is None
    with pytest.raises(DecodeError, match="PNG"):
        decode_image(bytes(data), SPEC)
