"""Input events: the two accepted wire forms, parsed into one `ImageEvent`.

1. JSON value: `{"id": "...", "image_url": "https://..."}` or `{"id": "...", "image_b64": "..."}`
   with optional `surface`, `source`, `metadata` (echoed back) and `submitted_at`.
2. CloudEvents Kafka protocol binding, binary mode: `ce_id`, `ce_type`, `ce_source`,
   `ce_specversion` headers, the raw image bytes as the value and `content-type: image/*`.
   Optional extension headers `ce_surface` and `ce_time` map to `surface` and `submitted_at`.

Text ends up in verdicts, Kafka keys and logs, so both forms hold it to the same limits. The
id, surface, source, image URL and CloudEvent attributes have a length cap and no control
characters; no text anywhere (metadata keys and values included) may hold a lone surrogate, the
JSON escape `\\ud800` that no UTF-8 encoder accepts. Metadata nests at most 32 levels, and JSON
numbers are finite (`NaN`, `Infinity`, `1e999` are refused). A null header value reads as
absent; a header key that is not text never matches.

Anything else raises `EventError` (DLQ reason `invalid_event`) with a message naming the field.
`json_event` and `cloudevent_headers` write the two forms, for producers and test tools.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import pybase64
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from moderator.cpu import Tally
from moderator.errors import EventError, TooLarge

MAX_ID_LENGTH = 256  # ids are Kafka keys and Redis-free log fields: keep them short
MAX_SURFACE_LENGTH = 128
MAX_SOURCE_LENGTH = 512
MAX_URL_LENGTH = 8192
MAX_METADATA_BYTES = 64 * 1024  # echoed in every verdict: bounded so verdicts stay publishable
MAX_METADATA_DEPTH = 32  # json.dumps recurses once per level: keep echoing far from the stack
# CloudEvent attributes that are read but not echoed; bounded so error messages stay short.
MAX_ATTRIBUTE_LENGTH = 256
MAX_TIME_LENGTH = 64
# Kafka allows null header values; keys the consumer could not decode arrive escaped.
Headers = Sequence[tuple[str, bytes | None]]

# Code points a JSON `\uXXXX` escape can leave unpaired: no UTF-8 encoder accepts them.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE_PROBLEM: Final = "contains a lone surrogate (U+D800-U+DFFF), which is not valid Unicode"


@dataclass(frozen=True, slots=True)
class ImageEvent:
    """One image to moderate, whichever wire form it came in."""

    id: str
    image_bytes: bytes | None = None
    image_url: str | None = None
    surface: str | None = None
    source: str | None = None
    metadata: dict[str, Any] | None = None
    submitted_at: datetime | None = None
    form: str = "json"


def _text_problem(value: str, max_length: int) -> str | None:
    """Why `value` cannot be echoed into a verdict or used as a key, or None."""
    if len(value) > max_length:
        return f"is {len(value)} characters; at most {max_length} are allowed"
    if _SURROGATE.search(value):
        return _SURROGATE_PROBLEM
    if _CONTROL.search(value):
        return "contains control characters"
    return None


def _check_text(value: Any, max_length: int) -> Any:
    if isinstance(value, str) and (problem := _text_problem(value, max_length)):
        raise ValueError(problem)
    return value


def _check_id(value: str) -> str:
    if not value or not value.strip():
        raise ValueError("must be a non-empty string")
    return str(_check_text(value, MAX_ID_LENGTH))


def _check_metadata(value: dict[Any, Any]) -> None:
    """Refuse what would break echoing it: deep nesting, lone surrogates, non-finite numbers.

    Iterative, so a hostile document cannot exhaust the stack here either.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ValueError(f"has a value that {_SURROGATE_PROBLEM}")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("holds a non-finite number")
        elif isinstance(item, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"nests deeper than {MAX_METADATA_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    if isinstance(key, str) and _SURROGATE.search(key):
                        raise ValueError(f"has a key that {_SURROGATE_PROBLEM}")
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


_TEXT_LIMITS = {
    "image_url": MAX_URL_LENGTH,
    "surface": MAX_SURFACE_LENGTH,
    "source": MAX_SOURCE_LENGTH,
}


class JsonEvent(BaseModel):
    """The JSON wire form (unknown fields are ignored so producers can add their own)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str
    image_url: str | None = Field(None, max_length=MAX_URL_LENGTH)
    image_b64: str | None = None
    surface: str | None = Field(None, max_length=MAX_SURFACE_LENGTH)
    source: str | None = Field(None, max_length=MAX_SOURCE_LENGTH)
    metadata: dict[str, Any] | None = None
    submitted_at: datetime | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _valid_id(cls, value: Any) -> Any:
        return _check_id(value) if isinstance(value, str) else value

    # "before": these messages, rather than pydantic's, name what is wrong with the text.
    @field_validator("image_url", "surface", "source", mode="before")
    @classmethod
    def _valid_text(cls, value: Any, info: ValidationInfo) -> Any:
        return _check_text(value, _TEXT_LIMITS[info.field_name or ""])

    @field_validator("submitted_at", mode="before")
    @classmethod
    def _parse_time(cls, value: Any) -> Any:
        # strict mode refuses strings for datetimes; ISO 8601 text is the documented form.
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError("must be an ISO 8601 timestamp") from exc
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _echoable_metadata(cls, value: Any) -> Any:
        # Verdicts echo metadata; unbounded, it could make a verdict too large to publish
        # (ASCII-escaped, non-ASCII text grows up to 6x), which no retry can fix.
        if isinstance(value, dict):
            _check_metadata(value)
            size = len(json.dumps(value))
            if size > MAX_METADATA_BYTES:
                raise ValueError(f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
        return value

    @model_validator(mode="after")
    def _one_image(self) -> JsonEvent:
        if (self.image_url is None) == (self.image_b64 is None):
            raise ValueError("exactly one of image_url or image_b64 is required")
        return self


def _header(headers: Headers, name: str) -> str | None:
    """The first non-null header `name` (case-insensitive), decoded; a null value reads as
    absent, and keys that are not text are never a match."""
    for key, value in headers:
        if not isinstance(key, str) or key.lower() != name or value is None:
            continue
        if not isinstance(value, bytes | bytearray | memoryview):
            raise EventError(f"header {name} is not bytes")
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(f"header {name} is not UTF-8") from exc
    return None


def _attribute(headers: Headers, name: str, max_length: int) -> str | None:
    """A CloudEvent attribute under the JSON form's limits for the same field."""
    value = _header(headers, name)
    if value is not None and (problem := _text_problem(value, max_length)):
        raise EventError(f"{name} {problem}")
    return value


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed: events carry finite numbers only")


def _finite_float(text: str) -> float:
    # Literals such as 1e999 parse to inf without passing through parse_constant.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range: events carry finite numbers only")
    return value


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        # ASCII-escaped and cut: a location can name an input key, and the message is echoed.
        where = ".".join(str(p) for p in error["loc"]) or "event"
        where = where.encode("ascii", "backslashreplace").decode("ascii")[:80]
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _b64decode(text: str) -> bytes:
    """base64 with SIMD (pybase64), deciding exactly as `base64.b64decode(validate=True)`:
    what pybase64 refuses goes to the stdlib, which also accepts `=` after a whole group."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(text, validate=True)


def is_cloudevent(headers: Headers) -> bool:
    """Whether a record is a binary-mode CloudEvent (its value is the image itself)."""
    return _header(headers, "ce_specversion") is not None or _header(headers, "ce_id") is not None


def parse_event(
    value: bytes | None, headers: Headers, *, max_bytes: int, tally: Tally | None = None
) -> ImageEvent:
    """Parse a Kafka record into an ImageEvent, or raise EventError / TooLarge. `tally`, when
    given, is charged the CPU of parsing (`parse`) and of an inline image's base64 (`base64`).
    """
    if is_cloudevent(headers):
        parsed = _parse_cloudevent(value, headers, max_bytes=max_bytes)
        if tally is not None:
            tally.lap("parse")
        return parsed
    if not value:
        raise EventError("empty record value: expected a JSON event or a CloudEvent")
    try:
        raw = json.loads(value, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and integers over Python's
        # 4300-digit limit; RecursionError is nesting deeper than the interpreter's stack.
        # Anything escaping here would stop the service on every redelivery of the record.
        raise EventError(f"value is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise EventError(f"value must be a JSON object, got {type(raw).__name__}")
    try:
        event = JsonEvent.model_validate(raw)
    except ValidationError as exc:
        raise EventError(_describe(exc)) from exc
    data: bytes | None = None
    if event.image_b64 is not None:
        # base64 inflates by 4/3: refuse before decoding a body that can only be too large.
        if len(event.image_b64) > max_bytes * 4 // 3 + 4:
            raise TooLarge(f"image_b64 decodes to more than {max_bytes} bytes")
        if tally is not None:
            tally.lap("parse")
        try:
            data = _b64decode(event.image_b64)
        except (binascii.Error, ValueError) as exc:
            raise EventError(f"image_b64 is not valid base64: {exc}") from exc
        if tally is not None:
            tally.lap("base64")
        if not data:
            raise EventError("image_b64 is empty")
    if tally is not None:
        tally.lap("parse")
    return ImageEvent(
        id=event.id,
        image_bytes=data,
        image_url=event.image_url,
        surface=event.surface,
        source=event.source,
        metadata=event.metadata,
        submitted_at=event.submitted_at,
    )


def _parse_cloudevent(value: bytes | None, headers: Headers, *, max_bytes: int) -> ImageEvent:
    required = {
        "ce_id": MAX_ID_LENGTH,
        "ce_type": MAX_ATTRIBUTE_LENGTH,
        "ce_source": MAX_SOURCE_LENGTH,
        "ce_specversion": MAX_ATTRIBUTE_LENGTH,
    }
    found = {h: _attribute(headers, h, limit) for h, limit in required.items()}
    missing = [h for h, v in found.items() if not v]
    if missing:
        raise EventError(f"CloudEvent is missing required headers: {', '.join(missing)}")
    event_id = found["ce_id"] or ""
    try:
        _check_id(event_id)
    except ValueError as exc:
        raise EventError(f"ce_id {exc}") from exc
    content_type = _attribute(headers, "content-type", MAX_ATTRIBUTE_LENGTH) or ""
    if not content_type.lower().startswith("image/"):
        raise EventError(f"CloudEvent content-type must be image/*, got {content_type!r}")
    surface = _attribute(headers, "ce_surface", MAX_SURFACE_LENGTH)
    ce_time = _attribute(headers, "ce_time", MAX_TIME_LENGTH)
    if not value:
        raise EventError("CloudEvent has an empty body")
    if len(value) > max_bytes:
        raise TooLarge(f"CloudEvent body is {len(value)} bytes; the limit is {max_bytes}")
    submitted: datetime | None = None
    if ce_time:
        try:
            submitted = datetime.fromisoformat(ce_time.replace("Z", "+00:00"))
        except ValueError as exc:
            raise EventError(f"ce_time is not an RFC 3339 timestamp: {ce_time!r}") from exc
    return ImageEvent(
        id=event_id,
        image_bytes=value,
        surface=surface,
        source=found["ce_source"],
        submitted_at=submitted,
        form="cloudevent",
    )


def now_iso() -> str:
    """Now, as the wire's timestamps are written: UTC, milliseconds, `Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_event(
    event_id: str, *, data: bytes | None = None, url: str | None = None, **extra: Any
) -> bytes:
    """The JSON wire form: exactly one of inline bytes (sent as image_b64) or a URL."""
    body: dict[str, Any] = {"id": event_id, "submitted_at": now_iso()}
    if data is not None:
        body["image_b64"] = base64.b64encode(data).decode("ascii")
    if url is not None:
        body["image_url"] = url
    body.update({k: v for k, v in extra.items() if v is not None})
    return json.dumps(body).encode()


def cloudevent_headers(
    event_id: str, content_type: str, surface: str | None = None
) -> list[tuple[str, bytes]]:
    """Binary-mode CloudEvents headers for raw image bytes."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_type", b"com.moderator.image.submitted"),
        ("ce_source", b"moderator-submit"),
        ("ce_time", now_iso().encode()),
        ("content-type", content_type.encode()),
    ]
    if surface:
        headers.append(("ce_surface", surface.encode()))
    return headers
