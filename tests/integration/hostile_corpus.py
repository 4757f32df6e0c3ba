"""The hostile-input corpus: Kafka records built to break the service, each with its outcome.

Every `Case` is one kind of abuse (or one awkward-but-valid image) and the answer the service
must give it: a verdict, or a dead-letter record with a given `x-error-reason`. Cases are
grouped by the service configuration they need:

* `strict_cases()` run against the production default, `fetch_allow_private=false`: the SSRF
  cases must be refused by the guard *before* any connection (no traffic leaves loopback:
  every URL here is a literal internal address, an internal name, a name /etc/hosts maps to
  loopback, or is refused for its scheme or credentials before any lookup).
* `loopback_cases(base)` need the misbehaving image server on 127.0.0.1, so they run with
  `fetch_allow_private=true` (tests only).

Sizes are chosen against the limits the corpus service runs with (see test_hostile_corpus.py):
MAX_IMAGE_BYTES below, and a DLQ topic whose max.message.bytes is smaller than the input
topic's, so that dead-lettering a large record exercises the oversize fallback.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import zlib
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import numpy as np
from PIL import Image

from moderator.demo.shapes import render

MAX_IMAGE_BYTES = 400_000  # the corpus service's MODERATOR_PIPELINE__MAX_IMAGE_BYTES
DLQ_MAX_MESSAGE_BYTES = 600_000  # the corpus DLQ topic's max.message.bytes (input: 1 MB)
VERDICT_MAX_MESSAGE_BYTES = 40_000  # the corpus verdict topic's: a 60 KB metadata echo is over
VERDICT = "verdict"

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class Case:
    """One record and the outcome it must get: VERDICT or "dlq:<reason>"."""

    name: str
    value: bytes | None
    expect: str
    headers: Headers = field(default_factory=list)
    key: bytes | None = None  # default: the case name
    # For VERDICT cases: the event id the verdict is keyed by (default: the case name).
    event_id: str | None = None
    copies: int = 1  # duplicate-id cases send the same record more than once
    # Header names as raw bytes (not UTF-8, say): sent through `kafka.raw`, not aiokafka.
    raw_headers: list[tuple[bytes, bytes | None]] | None = None
    compression: int = 0  # a Kafka codec: the record goes alone in a batch compressed with it


# ---------------------------------------------------------------- image builders


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def shape(size: int = 96, seed: int = 0) -> Image.Image:
    return render("star", "red", np.random.default_rng(seed), size=size)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims width × height RGB pixels, with the given IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b"")


def png_zero_bomb(side: int) -> bytes:
    """A real side × side RGB PNG of zeros: ~150 KB on the wire for 7000 px, 147 MB decoded."""
    row = b"\0" * (1 + side * 3)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_declaring(side, side, idat)


def gif_many_frames(frames: int) -> bytes:
    """An animated GIF of `frames` distinct 8×8 frames (only frame 0 may ever be decoded)."""
    images = []
    for i in range(frames):
        frame = Image.new("P", (8, 8), 0)
        frame.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        frame.putpixel((i % 8, (i // 8) % 8), 1)
        images.append(frame)
    return _encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def jpeg_bogus_huffman() -> bytes:
    """A JPEG whose Huffman table (DHT) declares impossible code counts."""
    data = bytearray(_encode(shape(), "JPEG", quality=90))
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # 16 code-length counts of 255: > 256 symbols
    return bytes(data)


def jpeg_garbled_scan() -> bytes:
    """A JPEG whose entropy-coded data is overwritten: libjpeg conceals it, still an image."""
    data = bytearray(_encode(shape(), "JPEG", quality=90))
    start = data.index(b"\xff\xda") + 20
    for i in range(start, len(data) - 10, 7):
        if data[i] != 0xFF and data[i - 1] != 0xFF:
            data[i] = 0xA5
    return bytes(data)


def jpeg_exif_rotated() -> bytes:
    image = shape(96).resize((96, 64))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    return _encode(image, "JPEG", exif=exif.tobytes())


def png_16bit_grey() -> bytes:
    ramp = (np.arange(96 * 96, dtype=np.uint32).reshape(96, 96) * 7 % 65536).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG")


def png_palette_alpha() -> bytes:
    image = shape(96).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(image, "PNG", transparency=0)


# ---------------------------------------------------------------- event builders


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def inline(name: str, data: bytes, **extra: object) -> bytes:
    # ensure_ascii=False: non-ASCII text travels as UTF-8, as most producers send it.
    body = {"id": name, "image_b64": _b64(data), **extra}
    return json.dumps(body, ensure_ascii=False).encode()


def by_url(name: str, url: str) -> bytes:
    return json.dumps({"id": name, "image_url": url}).encode()


def cloudevent(name: str, content_type: str = "image/png", **extra: str) -> Headers:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", name.encode()),
        ("ce_type", b"com.example.image"),
        ("ce_source", b"hostile-corpus"),
        ("content-type", content_type.encode()),
    ]
    return headers + [(k, v.encode()) for k, v in extra.items()]


def loopback_hostname() -> str | None:
    """A host name that /etc/hosts (no DNS query) maps to a loopback or private address."""
    try:
        hosts = Path("/etc/hosts").read_text()
    except OSError:
        return None
    names = {socket.gethostname()} | {"vm"}
    for line in hosts.splitlines():
        fields = line.split("#")[0].split()
        if len(fields) < 2:
            continue
        try:
            address = ip_address(fields[0])
        except ValueError:
            continue
        if not (address.is_loopback or address.is_private):
            continue
        for name in fields[1:]:
            # localhost* names are refused by name already; this case is about resolution.
            if name in names and not name.startswith("localhost"):
                return name
    return None


# ---------------------------------------------------------------- the corpus


def strict_cases(prefix: str) -> list[Case]:
    """Cases for a service with the SSRF guard at its production default."""
    png = _encode(shape(), "PNG")
    jpeg = _encode(shape(), "JPEG", quality=90)
    cases: list[Case] = []

    def add(kind: str, value: bytes | None, expect: str, **options: object) -> None:
        cases.append(Case(f"{prefix}-{kind}", value, expect, **options))  # type: ignore[arg-type]

    def dlq(reason: str) -> str:
        return f"dlq:{reason}"

    def n(kind: str) -> str:
        return f"{prefix}-{kind}"

    # Malformed events: never reach the image stages.
    add("invalid-json", b'{"id": "x", "image_b64": ', dlq("invalid_event"))
    add("not-an-object", b"[1, 2, 3]", dlq("invalid_event"))
    add("not-utf8", b"\xff\xfe\xfa{}", dlq("invalid_event"))
    add("empty-value", b"", dlq("invalid_event"))
    add("tombstone", None, dlq("invalid_event"))
    add(
        "id-wrong-type",
        json.dumps({"id": 7, "image_b64": _b64(png)}).encode(),
        dlq("invalid_event"),
    )
    add(
        "b64-wrong-type",
        json.dumps({"id": n("b64-wrong-type"), "image_b64": 12345}).encode(),
        dlq("invalid_event"),
    )
    add("missing-id", json.dumps({"image_b64": _b64(png)}).encode(), dlq("invalid_event"))
    add("no-image-field", json.dumps({"id": n("no-image-field")}).encode(), dlq("invalid_event"))
    add(
        "both-image-fields",
        json.dumps(
            {
                "id": n("both-image-fields"),
                "image_b64": _b64(png),
                "image_url": "https://a.example/",
            }
        ).encode(),
        dlq("invalid_event"),
    )
    add(
        "bad-base64",
        json.dumps({"id": n("bad-base64"), "image_b64": "@@not*base64@@"}).encode(),
        dlq("invalid_event"),
    )
    add("zero-byte-b64", inline(n("zero-byte-b64"), b""), dlq("invalid_event"))
    add("zero-byte-cloudevent", b"", dlq("invalid_event"), headers=cloudevent(n("zero-byte-ce")))
    add("deeply-nested-json", b"[" * 100_000 + b"]" * 100_000, dlq("invalid_event"))
    add(
        "huge-integer",
        b'{"id": "'
        + n("huge-integer").encode()
        + b'", "image_b64": "AAAA", "metadata": {"n": '
        + b"9" * 5000
        + b"}}",
        dlq("invalid_event"),
    )
    add("id-1mb", inline("i" * 1_000_000, png), dlq("invalid_event"))
    add("id-control-chars", inline(n("id-control") + "\x00\x1b[2J", png), dlq("invalid_event"))
    add("id-blank", inline("   ", png), dlq("invalid_event"))
    add(
        "huge-metadata",
        inline(n("huge-metadata"), png, metadata={"note": "é" * 250_000}),
        dlq("invalid_event"),
    )
    add(
        "cloudevent-html-type",
        png,
        dlq("invalid_event"),
        headers=cloudevent(n("ce-html"), "text/html"),
    )
    add(
        "cloudevent-missing-headers",
        png,
        dlq("invalid_event"),
        headers=[("ce_id", n("ce-missing").encode()), ("content-type", b"image/png")],
    )
    add(
        "cloudevent-bad-time",
        png,
        dlq("invalid_event"),
        headers=cloudevent(n("ce-time"), ce_time="yesterday"),
    )
    add(
        "url-too-long",
        by_url(n("url-too-long"), "https://a.example/" + "x" * 9000),
        dlq("invalid_event"),
    )

    # Bytes that are not a usable image.
    add("truncated-jpeg", inline(n("truncated-jpeg"), jpeg[:300]), dlq("decode_error"))
    add(
        "bogus-huffman-table", inline(n("bogus-huffman"), jpeg_bogus_huffman()), dlq("decode_error")
    )
    add("png-zero-width", inline(n("png-zero-width"), png_declaring(0, 10)), dlq("decode_error"))
    add(
        "png-huge-dimensions",
        inline(n("png-huge-dims"), png_declaring(100_000, 100_000)),
        dlq("decompression_bomb"),
    )
    add(
        "svg-as-image",
        inline(n("svg"), b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
        dlq("unsupported_format"),
    )
    add(
        "html-as-image",
        inline(n("html"), b"<!DOCTYPE html><html><body>hi</body></html>"),
        dlq("unsupported_format"),
    )
    add(
        "pdf-as-image",
        inline(n("pdf"), b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF"),
        dlq("unsupported_format"),
    )
    add(
        "svg-cloudevent",
        b"<svg/>",
        dlq("unsupported_format"),
        headers=cloudevent(n("svg-ce"), "image/svg+xml"),
    )
    add(
        "ico-not-allowed",
        inline(n("ico"), _encode(Image.new("RGB", (16, 16)), "ICO")),
        dlq("unsupported_format"),
    )
    add(
        "random-bytes",
        inline(n("random"), np.random.default_rng(3).bytes(4000)),
        dlq("unsupported_format"),
    )
    # Over MAX_IMAGE_BYTES; its DLQ copy is also over the DLQ topic's size limit.
    big = np.random.default_rng(4).bytes(MAX_IMAGE_BYTES + 50_000)
    add("oversized-inline", inline(n("oversized"), big), dlq("too_large"))
    add("oversized-cloudevent", big, dlq("too_large"), headers=cloudevent(n("oversized-ce")))

    # SSRF: refused before any connection.
    for kind, url in (
        ("url-loopback", "http://127.0.0.1:6379/"),
        ("url-ipv6-loopback", "http://[::1]:6379/"),
        ("url-private-10", "http://10.0.0.1/a.png"),
        ("url-metadata", "http://169.254.169.254/latest/meta-data/"),
        ("url-localhost", "http://localhost:9092/"),
        ("url-decimal-ip", "http://2130706433/"),
        ("url-ipv4-mapped", "http://[::ffff:127.0.0.1]/"),
        ("url-unspecified", "http://0.0.0.0/"),
        ("url-internal-name", "http://metadata.google.internal/computeMetadata/v1/"),
        ("url-file", "file:///etc/passwd"),
        ("url-gopher", "gopher://127.0.0.1:6379/_FLUSHALL"),
        ("url-credentials", "https://user:hunter2@images.example/a.png"),
    ):
        add(kind, by_url(n(kind), url), dlq("fetch_blocked"))
    host = loopback_hostname()
    if host is not None:
        add(
            "url-name-resolving-to-loopback",
            by_url(n("url-name"), f"http://{host}:9/"),
            dlq("fetch_blocked"),
        )
    add("url-malformed-idna", by_url(n("url-idna"), "http://xn--/a.png"), dlq("fetch_failed"))

    # Poison: records that once stopped the service (or would have). Each is answered, and the
    # valid cases after them prove the service went on.
    b64 = _b64(png)
    poison_json = {
        "id-lone-surrogate": f'{{"id": "{n("sur")}\\ud800", "image_b64": "{b64}"}}',
        "metadata-lone-surrogate": (
            f'{{"id": "{n("msur")}", "image_b64": "{b64}", "metadata": {{"k\\udfff": [1]}}}}'
        ),
        "metadata-nan": f'{{"id": "{n("nan")}", "image_b64": "{b64}", "metadata": {{"x": NaN}}}}',
        "metadata-infinity": (
            f'{{"id": "{n("inf")}", "image_b64": "{b64}", "metadata": {{"x": [-Infinity]}}}}'
        ),
        "url-host-lone-surrogate": f'{{"id": "{n("hsur")}", "image_url": "http://a\\udc80b.example/"}}',
    }
    for kind, text in poison_json.items():
        add(kind, text.encode(), dlq("invalid_event"))
    add(
        "url-host-label-too-long",
        by_url(n("label"), "http://" + "a" * 64 + ".example/a.png"),
        dlq("fetch_failed"),
    )
    add(
        "url-host-empty-label",
        by_url(n("empty-label"), "http://a..example/a.png"),
        dlq("fetch_failed"),
    )
    add(
        "header-name-not-utf8",
        inline(n("hname"), png, surface="upload"),
        VERDICT,
        event_id=n("hname"),
        raw_headers=[(b"\xff\xfe", b"x"), (b"trace", None)],
    )
    add(
        "header-name-not-utf8-on-a-dead-letter",
        b"{not json",
        dlq("invalid_event"),
        raw_headers=[(b"\xc3\x28", b"v"), (b"", None)],
    )
    add(
        "header-value-null",
        inline(n("hnull"), png, surface="upload"),
        VERDICT,
        event_id=n("hnull"),
        headers=[("trace", None)],
    )
    base = [h for h in cloudevent(n("ce")) if h[0] not in ("ce_id", "ce_source")]
    for kind, extra in (
        ("cloudevent-id-not-utf8", [("ce_id", b"\xff\xfe"), ("ce_source", b"s")]),
        (
            "cloudevent-source-500k",
            [("ce_id", n("ce-src").encode()), ("ce_source", b"s" * 500_000)],
        ),
        (
            "cloudevent-surface-control-chars",
            [("ce_id", n("ce-sfc").encode()), ("ce_source", b"s"), ("ce_surface", b"a\x00b")],
        ),
        ("cloudevent-id-lone-surrogate-bytes", [("ce_id", b"e\xed\xa0\x80"), ("ce_source", b"s")]),
    ):
        add(kind, png, dlq("invalid_event"), headers=base + extra)
    # 70 MB of zeros in a zstd batch of a few KB: over the service's bound on a decompressed
    # batch (64 MiB by default), so the batch is never inflated in the service.
    add("zstd-bomb-batch", b"\0" * 70_000_000, dlq("too_large"), raw_headers=[], compression=4)
    # Valid, with metadata within its 64 KB limit, but the verdict echoing it is over the
    # verdict topic's limit: published without the echo.
    add(
        "verdict-over-topic-limit",
        inline(n("big-echo"), png, surface="upload", metadata={"blob": "x" * 60_000}),
        VERDICT,
        event_id=n("big-echo"),
    )

    # Awkward but valid: every one must get a verdict.
    valid = {
        "cmyk-jpeg": _encode(shape().convert("CMYK"), "JPEG"),
        "png-16bit-grey": png_16bit_grey(),
        "png-palette-alpha": png_palette_alpha(),
        "jpeg-exif-rotated": jpeg_exif_rotated(),
        "png-1x1": _encode(Image.new("RGB", (1, 1), (200, 0, 0)), "PNG"),
        "png-greyscale": _encode(shape().convert("L"), "PNG"),
        "png-rgba": _encode(shape().convert("RGBA"), "PNG"),
        "png-1x4000": _encode(Image.new("RGB", (1, 4000), (0, 0, 200)), "PNG"),
        "jpeg-progressive": _encode(shape(), "JPEG", progressive=True),
        "jpeg-garbled-scan": jpeg_garbled_scan(),
        "webp": _encode(shape(), "WEBP"),
        "bmp": _encode(shape(64), "BMP"),
        "tiff": _encode(shape(64), "TIFF"),
        "gif-3000-frames": gif_many_frames(3000),
    }
    for kind, data in valid.items():
        add(kind, inline(n(kind), data, surface="upload"), VERDICT)
    # 49 M pixels of zeros, just under the 50 M-pixel default limit: decoded, within the RSS bound.
    add("png-49mpx-zeros", png_zero_bomb(7000), VERDICT, headers=cloudevent(n("png-49mpx-zeros")))
    add("cloudevent-png", png, VERDICT, headers=cloudevent(n("cloudevent-png")))
    cases.append(
        Case(n("duplicate-id"), inline(n("duplicate-id"), png, surface="upload"), VERDICT, copies=3)
    )
    return cases


def loopback_cases(prefix: str, base: str, image: str) -> list[Case]:
    """URL cases against the misbehaving server at `base`; `image` is a served image's name."""
    cases: list[Case] = []
    for kind, path, expect in (
        ("url-black-hole", "/hole/a.jpg", "dlq:fetch_failed"),
        ("url-slowloris", "/trickle/a.jpg", "dlq:fetch_failed"),
        ("url-redirect-loop", "/loop/0", "dlq:fetch_failed"),
        ("url-404", "/status/404/a.jpg", "dlq:fetch_failed"),
        ("url-503", "/status/503/a.jpg", "dlq:fetch_failed"),
        ("url-gzip-encoded", f"/gzip/{image}", "dlq:fetch_failed"),
        ("url-huge-content-length", "/huge/a.jpg", "dlq:too_large"),
        ("url-redirect-to-file", "/redirect?to=file:///etc/passwd", "dlq:fetch_blocked"),
        ("url-redirect-to-gopher", "/redirect?to=gopher://127.0.0.1:6379/_x", "dlq:fetch_blocked"),
        ("url-ok", f"/img/{image}", VERDICT),
        ("url-redirect-to-ok", f"/redirect?to=/img/{image}", VERDICT),
    ):
        name = f"{prefix}-{kind}"
        cases.append(Case(name, by_url(name, base + path), expect))
    return cases
