"""Input events: the two accepted wire forms, parsed into one `ImageEvent`.

1. JSON value: `{"id": "...", "image_url": "https://..."}` or `{"id": "...", "image_b64": "..."}`
   with optional `surface`, `source`, `metadata` (echoed back) and `submitted_at`.
2. CloudEvents Kafka protocol binding, binary mode: `ce_id`, `ce_type`, `ce_source`,
   `ce_specversion` headers, the raw image bytes as the value and `content-type: image/*`.
   Optional extension headers `ce_surface` and `ce_time` map to `surface` and `submitted_at`.

Anything else raises `EventError` (DLQ reason `invalid_event`) with a message naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moderator.errors import EventError, TooLarge

MAX_ID_LENGTH = 256  # ids are Kafka keys and Redis-free log fields: keep them short
MAX_METADATA_BYTES = 64 * 1024  # echoed in every verdict: bounded so verdicts stay publishable
Headers = Sequence[tuple[str, bytes]]


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


def _check_id(value: str) -> str:
    if not value or not value.strip():
        raise ValueError("must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"is {len(value)} characters; at most {MAX_ID_LENGTH} are allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("contains control characters")
    return value


class JsonEvent(BaseModel):
    """The JSON wire form (unknown fields are ignored so producers can add their own)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str
    image_url: str | None = Field(None, max_length=8192)
    image_b64: str | None = None
    surface: str | None = Field(None, max_length=128)
    source: str | None = Field(None, max_length=512)
    metadata: dict[str, Any] | None = None
    submitted_at: datetime | None = None

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return _check_id(value)

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

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Verdicts echo metadata; unbounded, it could make a verdict too large to publish
        # (ASCII-escaped, non-ASCII text grows up to 6x), which no retry can fix.
        if value is not None:
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
    for key, value in headers:
        if key.lower() == name:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EventError(f"header {name} is not UTF-8") from exc
    return None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_event(value: bytes | None, headers: Headers, *, max_bytes: int) -> ImageEvent:
    """Parse a Kafka record into an ImageEvent, or raise EventError / TooLarge."""
    if _header(headers, "ce_specversion") is not None or _header(headers, "ce_id") is not None:
        return _parse_cloudevent(value, headers, max_bytes=max_bytes)
    if not value:
        raise EventError("empty record value: expected a JSON event or a CloudEvent")
    try:
        raw = json.loads(value)
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
        try:
            data = base64.b64decode(event.image_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError(f"image_b64 is not valid base64: {exc}") from exc
        if not data:
            raise EventError("image_b64 is empty")
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
    missing = [
        h for h in ("ce_id", "ce_type", "ce_source", "ce_specversion") if not _header(headers, h)
    ]
    if missing:
        raise EventError(f"CloudEvent is missing required headers: {', '.join(missing)}")
    event_id = _header(headers, "ce_id") or ""
    try:
        _check_id(event_id)
    except ValueError as exc:
        raise EventError(f"ce_id {exc}") from exc
    content_type = _header(headers, "content-type") or ""
    if not content_type.lower().startswith("image/"):
        raise EventError(f"CloudEvent content-type must be image/*, got {content_type!r}")
    if not value:
        raise EventError("CloudEvent has an empty body")
    if len(value) > max_bytes:
        raise TooLarge(f"CloudEvent body is {len(value)} bytes; the limit is {max_bytes}")
    submitted: datetime | None = None
    if ce_time := _header(headers, "ce_time"):
        try:
            submitted = datetime.fromisoformat(ce_time.replace("Z", "+00:00"))
        except ValueError as exc:
            raise EventError(f"ce_time is not an RFC 3339 timestamp: {ce_time!r}") from exc
    return ImageEvent(
        id=event_id,
        image_bytes=value,
        surface=_header(headers, "ce_surface"),
        source=_header(headers, "ce_source"),
        submitted_at=submitted,
        form="cloudevent",
    )
