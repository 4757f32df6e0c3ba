"""Whole records, any bytes and any headers, through the service's real parse → handle path.

The service is assembled from its real parts (demo model on the CPU, the demo policy, a decode
process, the batcher, the publisher) with only the Kafka producer replaced by one that keeps
what it is sent. Every record must end as exactly one verdict or one dead letter whose reason
is an anticipated one: nothing escapes `_handle`, and nothing becomes `internal_error`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from moderator.embed import load_model
from moderator.errors import InferenceFailed, Reason
from moderator.kafka.publish import Publisher
from moderator.pipeline.acquire.fetch import Fetched, Fetcher, FetchPolicy
from moderator.pipeline.batch import Batcher
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.pool import DecodePool
from moderator.policy.reload import PolicyReloader
from moderator.service.app import Service
from moderator.settings import load_settings

POLICY = Path(__file__).resolve().parents[3] / "policies" / "demo.yaml"


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[Any]]] = []

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: list[Any]
    ) -> asyncio.Future[None]:
        if key is None and value is None:  # aiokafka's own check
            raise AssertionError("Need at least one: key or value")
        self.sent.append((topic, key, value, headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Route:
    """A service wired for `_handle` alone, on its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.producer = _Producer()
        self.service = Service(
            load_settings(
                environ={
                    "MODERATOR_REDIS__ENABLED": "false",
                    "MODERATOR_PIPELINE__MAX_IMAGE_BYTES": "200000",
                }
            )
        )
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        s = self.service
        runtime = load_model("demo", providers=["cpu"])
        s._runtimes = [runtime]
        s._spec = PreprocessSpec(
            runtime.image_size, runtime.manifest.resize_shortest_edge, max_bytes=200_000
        )
        s._reloader = PolicyReloader(POLICY, runtime, cache=None, interval_s=3600)
        await s._reloader.start()
        s._decode_pool = DecodePool(1, s._spec)
        await s._decode_pool.start()
        s._batcher = Batcher([runtime.encode_pixels], max_batch=8, max_wait_s=0.001)
        s._batcher.start()
        s._fetcher = Fetcher(FetchPolicy(timeout_s=0.5, retries=0, max_bytes=200_000))
        s._publisher = Publisher(self.producer, "verdicts", "dlq", {"verdicts": 20_000})  # type: ignore[arg-type]

    def handle(self, record: ConsumerRecord[bytes, bytes]) -> list[Any]:
        before = len(self.producer.sent)
        self.loop.run_until_complete(self.service._handle(record))
        return self.producer.sent[before:]

    def close(self) -> None:
        s = self.service
        assert s._batcher is not None
        assert s._decode_pool is not None
        assert s._fetcher is not None
        assert s._reloader is not None
        self.loop.run_until_complete(s._reloader.stop())
        self.loop.run_until_complete(s._batcher.stop())
        self.loop.run_until_complete(s._decode_pool.close())
        self.loop.run_until_complete(s._fetcher.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def route() -> Iterator[_Route]:
    wired = _Route()
    yield wired
    wired.close()


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


_PNG = _png(40)
# Any code point, lone surrogates (which hypothesis seldom draws by itself) and controls mixed in.
_text = st.lists(
    st.one_of(
        st.characters(exclude_categories=()),
        st.sampled_from(["\ud800", "\udfff", "\x00", "\x1f", "\x85", "\u202e"]),
    ),
    max_size=20,
).map("".join)
_odd = st.one_of(
    _text,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.lists(_text, max_size=3),
    st.dictionaries(_text, _text, max_size=3),
)
_good_id = st.from_regex(r"[a-z0-9-]{1,24}", fullmatch=True)


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three good draws to one hostile: a record must get far enough to meet the later stages."""
    return st.one_of(good, good, good, bad)


_json_event = st.fixed_dictionaries(
    {
        "id": _mostly(_good_id, _odd),
        "image_b64": _mostly(st.just(base64.b64encode(_PNG).decode()), _odd),
    },
    optional={
        "surface": _mostly(st.sampled_from(["profile_photo", "Profile_Photo", "feed"]), _odd),
        "source": _mostly(st.just("app"), _odd),
        "metadata": _mostly(st.dictionaries(st.sampled_from(["a", "b"]), st.integers()), _odd),
        "submitted_at": _mostly(st.just("2026-12-07T10:00:00Z"), _odd),
    },
)
_url_event = st.fixed_dictionaries(
    {
        "id": _good_id,
        "image_url": st.sampled_from(
            ["http://127.0.0.1/a.png", "file:///etc/passwd", "http://[::1]/", "http://a..b/", ""]
        ),
    }
)
_json_value = st.one_of(_json_event, _json_event, _url_event).map(
    lambda body: json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
)
_values = st.one_of(st.none(), st.binary(max_size=300), _json_value, _json_value, st.just(_PNG))
_header_names = st.one_of(
    _text,
    _text,
    st.sampled_from(
        [
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_surface",
            "ce_time",
            "content-type",
            "x-attempts",
            "x-error-reason",
        ]
    ),
    _text,
)
_headers = st.lists(st.tuples(_header_names, st.none() | st.binary(max_size=20)), max_size=4)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=st.none() | st.binary(max_size=40), value=_values, headers=_headers)
def test_every_record_ends_as_one_verdict_or_one_anticipated_dead_letter(
    route: _Route, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    record = ConsumerRecord(
        "in", 0, 7, 1_700_000_000_000, 0, key, value, None, -1, -1, tuple(headers)
    )
    sent = route.handle(record)  # type: ignore[arg-type]
    assert len(sent) == 1, sent
    event(sent[0][0] if sent[0][0] == "verdicts" else dict(sent[0][3])["x-error-reason"].decode())
    topic, out_key, out_value, out_headers = sent[0]
    if topic == "verdicts":
        verdict = json.loads(out_value, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
        assert verdict["decision"] in ("flag", "review", "allow")
        assert out_key == verdict["id"].encode()
        return
    assert topic == "dlq"
    names = dict(out_headers)
    reason = names["x-error-reason"].decode()
    assert reason in {r.value for r in Reason} - {Reason.INTERNAL_ERROR.value}, names
    assert names["x-original-offset"] == b"7"
    for name, _value in out_headers:
        name.encode("utf-8")  # every name sendable


def test_a_valid_event_gets_a_verdict(route: _Route) -> None:
    value = json.dumps({"id": "ok-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    sent = route.handle(ConsumerRecord("in", 0, 1, 0, 0, None, value, None, -1, -1, ()))  # type: ignore[arg-type]
    assert [s[0] for s in sent] == ["verdicts"]
    assert json.loads(sent[0][2])["id"] == "ok-1"


def test_an_unanticipated_exception_is_an_internal_error_dead_letter(
    route: _Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("moderator.service.app.build_verdict", broken)
    value = json.dumps({"id": "bug-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    sent = route.handle(ConsumerRecord("in", 0, 3, 0, 0, b"k", value, None, -1, -1, ()))  # type: ignore[arg-type]
    assert len(sent) == 1
    headers = dict(sent[0][3])
    assert sent[0][0] == "dlq"
    assert headers["x-error-reason"] == b"internal_error"
    assert b"RuntimeError: a bug" in headers["x-error-detail"]
    assert sent[0][2] == value  # the record itself is kept for replay


def _clean(value: Any, *, controls: bool = False) -> bool:
    """No text the parser must refuse: lone surrogates, NaN or Inf, and control characters
    unless `controls` (metadata may carry them: JSON escapes them)."""
    if isinstance(value, str):
        return not any(
            0xD800 <= ord(c) <= 0xDFFF
            or (not controls and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F))
            for c in value
        )
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return all(
            _clean(k, controls=controls) and _clean(v, controls=controls) for k, v in value.items()
        )
    if isinstance(value, list):
        return all(_clean(v, controls=controls) for v in value)
    return True


_metadata = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(event_id="0", surface=None, source="\ud800\udc00", metadata=None, header_names=[])
@given(
    event_id=_good_id,
    surface=st.none() | _text,
    source=st.none() | _text,
    metadata=st.none() | st.dictionaries(_text, _metadata, max_size=4),
    header_names=st.lists(_text.filter(lambda n: not n.lower().startswith("ce_")), max_size=3),
)
def test_a_valid_image_with_any_echoed_fields_is_a_verdict_unless_they_are_unencodable(
    route: _Route,
    event_id: str,
    surface: str | None,
    source: str | None,
    metadata: dict[str, Any] | None,
    header_names: list[str],
) -> None:
    body = {"id": event_id, "image_b64": base64.b64encode(_PNG).decode()}
    body |= {"surface": surface, "source": source, "metadata": metadata}
    value = json.dumps(body, ensure_ascii=True).encode()
    headers = tuple((name, b"v") for name in header_names)
    sent = route.handle(ConsumerRecord("in", 0, 5, 0, 0, None, value, None, -1, -1, headers))  # type: ignore[arg-type]
    assert len(sent) == 1
    event(sent[0][0])
    # Judged as the parser sees them: JSON joins an escaped surrogate pair into one character.
    seen = json.loads(json.dumps([surface, source, metadata]))
    clean = _clean(seen[0]) and _clean(seen[1]) and _clean(seen[2], controls=True)
    if sent[0][0] == "verdicts":
        assert clean
        verdict = json.loads(sent[0][2], parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
        assert verdict["metadata"] == metadata or verdict.get("truncated")
        return
    reason = dict(sent[0][3])["x-error-reason"]
    assert reason == b"invalid_event"
    assert not clean or len(json.dumps(metadata)) > 64 * 1024, dict(sent[0][3])


def test_a_failure_after_the_verdict_does_not_answer_the_event_twice(
    route: _Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in counting")

    monkeypatch.setattr(route.service, "_count_verdict", broken)
    value = json.dumps({"id": "once-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    sent = route.handle(ConsumerRecord("in", 0, 4, 0, 0, None, value, None, -1, -1, ()))  # type: ignore[arg-type]
    assert [s[0] for s in sent] == ["verdicts"]


def test_an_inference_failure_is_the_services_not_a_dead_letter(
    route: _Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(pixels: Any) -> Any:
        raise InferenceFailed("inference failed: CUDA error")

    assert route.service._batcher is not None
    monkeypatch.setattr(route.service._batcher, "embed", failing)
    value = json.dumps({"id": "gpu-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    before = len(route.producer.sent)
    with pytest.raises(InferenceFailed):
        route.handle(ConsumerRecord("in", 0, 5, 0, 0, None, value, None, -1, -1, ()))  # type: ignore[arg-type]
    assert len(route.producer.sent) == before  # nothing published: the event stays unanswered


def test_an_image_fetched_after_a_retry_and_then_refused_counts_its_fetch_attempts(
    route: _Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fetch(url: str) -> Fetched:
        return Fetched(b"not an image at all", url, attempts=2, content_type="image/png")

    assert route.service._fetcher is not None
    monkeypatch.setattr(route.service._fetcher, "fetch", fetch)
    value = json.dumps({"id": "retried-1", "image_url": "https://img.example/a.png"}).encode()
    sent = route.handle(ConsumerRecord("in", 0, 6, 0, 0, None, value, None, -1, -1, ()))  # type: ignore[arg-type]
    (out,) = sent
    headers = dict(out[3])
    assert out[0] == "dlq"
    assert headers["x-error-reason"] == b"unsupported_format"
    assert headers["x-attempts"] == b"2"
