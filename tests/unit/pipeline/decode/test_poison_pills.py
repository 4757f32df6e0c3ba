"""Inputs that once escaped the typed errors and so stopped `serve` on every redelivery.

Anything a record can make the parser or fetcher raise, other than a ModeratorError, is
treated by the service as "not the event's fault" and stops it without committing: the
restarted service meets the same record and stops again. Each case here now maps to a DLQ
reason instead. (The end-to-end versions are in tests/integration/test_hostile_corpus.py.)
"""

from __future__ import annotations

import json

import pytest

from moderator.errors import AcquireError, EventError, Reason
from moderator.pipeline.acquire.fetch import Fetcher, FetchPolicy
from moderator.pipeline.events import MAX_METADATA_BYTES, parse_event


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json.loads
        b'{"id": "a", "image_b64": "AAAA", "metadata": {"n": ' + b"9" * 5000 + b"}}",  # int limit
    ],
    ids=["nesting-100000-deep", "5000-digit-integer"],
)
def test_json_the_decoder_chokes_on_is_an_invalid_event(value: bytes) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(value, [], max_bytes=1_000_000)
    assert caught.value.reason is Reason.INVALID_EVENT


def _with_metadata(note: str) -> bytes:
    body = {"id": "a", "image_b64": "AAAA", "metadata": {"note": note}}
    return json.dumps(body, ensure_ascii=False).encode()


def test_metadata_is_bounded_as_the_verdict_will_encode_it() -> None:
    # 20 000 "é" are 40 KB as UTF-8 but 120 KB as the ASCII-escaped JSON a verdict carries.
    with pytest.raises(EventError, match="metadata"):
        parse_event(_with_metadata("é" * 20_000), [], max_bytes=1_000_000)
    fits = "x" * (MAX_METADATA_BYTES - len(json.dumps({"note": ""})))
    assert parse_event(_with_metadata(fits), [], max_bytes=1_000_000).metadata == {"note": fits}


async def test_malformed_idna_host_is_a_fetch_failure_not_a_crash() -> None:
    # Refused while checking the URL: nothing is resolved or connected to.
    async with Fetcher(FetchPolicy(timeout_s=1, retries=0, max_bytes=100)) as fetcher:
        with pytest.raises(AcquireError, match="invalid host name"):
            await fetcher.fetch("http://xn--/a.png")
