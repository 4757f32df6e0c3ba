import base64
import json

import pytest

from moderator.errors import EventError, Reason, TooLarge
from moderator.events import parse_event

PNG = b"\x89PNG\r\n\x1a\nfake"


def _json(**body: object) -> bytes:
    return json.dumps(body).encode()


def test_inline_event_decodes_base64_and_keeps_optional_fields() -> None:
    value = _json(
        id="e1",
        image_b64=base64.b64encode(PNG).decode(),
        surface="profile_photo",
        metadata={"user": 7},
        submitted_at="2026-11-27T08:00:00Z",
    )
    event = parse_event(value, [], max_bytes=1000)
    assert event.id == "e1"
    assert event.image_bytes == PNG
    assert event.surface == "profile_photo"
    assert event.metadata == {"user": 7}
    assert event.submitted_at is not None
    assert event.submitted_at.year == 2026


def test_url_event() -> None:
    event = parse_event(_json(id="e2", image_url="https://img.test/a.jpg"), [], max_bytes=10)
    assert event.image_url == "https://img.test/a.jpg"
    assert event.image_bytes is None


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    event = parse_event(_json(id="e", image_url="https://x.test/", extra=1), [], max_bytes=10)
    assert event.id == "e"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (_json(image_url="https://x.test/"), "id"),
        (_json(id=5, image_url="https://x.test/"), "id"),
        (_json(id="", image_url="https://x.test/"), "non-empty"),
        (_json(id="a\x00b", image_url="https://x.test/"), "control characters"),
        (_json(id="x" * 300, image_url="https://x.test/"), "at most 256"),
        (_json(id="e"), "exactly one"),
        (_json(id="e", image_url="https://x.test/", image_b64="AAAA"), "exactly one"),
        (_json(id="e", image_b64="!!!notbase64"), "base64"),
        (_json(id="e", image_b64=""), "empty"),
        (_json(id="e", image_url="https://x.test/", submitted_at="yesterday"), "ISO 8601"),
    ],
)
def test_malformed_events_raise_invalid_event(value: bytes, fragment: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(value, [], max_bytes=1000)
    assert info.value.reason is Reason.INVALID_EVENT
    assert fragment in str(info.value)


def test_oversized_inline_image_is_too_large_before_decoding() -> None:
    value = _json(id="e", image_b64=base64.b64encode(b"x" * 5000).decode())
    with pytest.raises(TooLarge):
        parse_event(value, [], max_bytes=1000)


def _ce_headers(**overrides: str) -> list[tuple[str, bytes]]:
    headers = {
        "ce_specversion": "1.0",
        "ce_id": "ce-1",
        "ce_type": "image.submitted",
        "ce_source": "uploads",
        "content-type": "image/png",
        "ce_surface": "chat",
    }
    headers.update(overrides)
    return [(k, v.encode()) for k, v in headers.items() if v]


def test_cloudevent_binary_mode() -> None:
    event = parse_event(PNG, _ce_headers(ce_time="2026-11-27T08:00:00Z"), max_bytes=1000)
    assert (event.id, event.image_bytes, event.surface, event.form) == (
        "ce-1",
        PNG,
        "chat",
        "cloudevent",
    )
    assert event.source == "uploads"


@pytest.mark.parametrize(
    ("overrides", "body", "fragment"),
    [
        ({"ce_type": ""}, PNG, "ce_type"),
        ({"content-type": "application/json"}, PNG, "image/*"),
        ({}, b"", "empty body"),
        ({"ce_id": "bad\nid"}, PNG, "control"),
        ({"ce_time": "noon"}, PNG, "RFC 3339"),
    ],
)
def test_bad_cloudevents(overrides: dict[str, str], body: bytes, fragment: str) -> None:
    with pytest.raises(EventError, match=fragment):
        parse_event(body, _ce_headers(**overrides), max_bytes=1000)


def test_cloudevent_over_limit() -> None:
    with pytest.raises(TooLarge):
        parse_event(b"x" * 2000, _ce_headers(), max_bytes=1000)
