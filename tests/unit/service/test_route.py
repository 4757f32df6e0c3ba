"""Whole records, any bytes and any headers, through the real route (`moderator.service.route`).

The route is assembled from its real parts (demo model on the CPU, the demo policy, a decode
process, the batcher, the publisher) on the in-memory Kafka (`moderator.kafka.fake`). Every
record must end as exactly one verdict or one dead letter whose reason is an anticipated one:
nothing escapes `Route.handle`, nothing becomes `internal_error`, and every verdict matches
the published JSON Schema.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from moderator.cache.memory import MemoryEmbeddingCache
from moderator.embed import load_model
from moderator.errors import InferenceFailed, PublishFailed, Reason
from moderator.kafka.fake import FakeBroker, FakeProducer, FakeRecord
from moderator.kafka.publish import Publisher
from moderator.pipeline.acquire.fetch import Fetched, Fetcher, FetchPolicy
from moderator.pipeline.batch import Batcher
from moderator.pipeline.budget import Hold, MemoryBudget
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.pool import DecodePool
from moderator.policy.reload import PolicyReloader
from moderator.service.embedder import Embedder
from moderator.service.metrics import Metrics
from moderator.service.route import Route
from moderator.service.sensor import Sensor

REPO = Path(__file__).resolve().parents[3]
POLICY = REPO / "policies" / "demo.yaml"
_VERDICTS = "moderator_verdicts_total"
_DECISIONS = ("flag", "review", "allow")
VERDICT_SCHEMA = json.loads((REPO / "deploy" / "schemas" / "verdict.schema.json").read_text())
Sent = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def _record(
    offset: int,
    value: bytes | None,
    *,
    key: bytes | None = None,
    headers: tuple[tuple[str, bytes | None], ...] = (),
    timestamp: int = 0,
) -> FakeRecord:
    return FakeRecord("in", 0, offset, key, value, headers, timestamp)


class _Wired:
    """A route on its own event loop, publishing to a fake broker."""

    def __init__(self, *, cached: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.broker = FakeBroker()
        self.metrics = Metrics()
        self.budget = MemoryBudget(64 * 1024 * 1024)
        self.cache = MemoryEmbeddingCache() if cached else None
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        runtime = load_model("demo", providers=["cpu"])
        self.runtime = runtime
        spec = PreprocessSpec(
            runtime.image_size, runtime.manifest.resize_shortest_edge, max_bytes=200_000
        )
        sensor = Sensor(self.metrics)
        self.reloader = PolicyReloader(POLICY, runtime, cache=None, interval_s=3600)
        await self.reloader.start()
        self.pool = DecodePool(1, spec)
        await self.pool.start()
        self.batcher = Batcher([runtime.encode_pixels], max_batch=8, max_wait_s=0.001)
        self.batcher.start()
        self.fetcher = Fetcher(FetchPolicy(timeout_s=0.5, retries=0, max_bytes=200_000))
        producer = FakeProducer(self.broker)
        self.embedder = Embedder(
            spec=spec,
            model_sha256=runtime.sha256,
            decode_pool=self.pool,
            fetcher=self.fetcher,
            batcher=self.batcher,
            budget=self.budget,
            sensor=sensor,
            cache=self.cache,
            image_ttl_s=60,
            gpu_decode=False,
        )
        self.route = Route(
            embedder=self.embedder,
            policies=self.reloader,
            model=runtime,
            publisher=Publisher(producer, "verdicts", "dlq", {"verdicts": 20_000}),
            sensor=sensor,
            embeddings_topic="embeddings",
        )

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample's value, 0 when it was never set."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def cpu(self, stage: str) -> float:
        """CPU seconds counted for `stage`, whatever the metric's other labels."""
        return sum(
            sample.value
            for metric in self.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "moderator_cpu_seconds_total" and sample.labels["stage"] == stage
        )

    def answers(self) -> int:
        """Verdicts and dead letters sent so far."""
        return len(self.broker.records("verdicts")) + len(self.broker.records("dlq"))

    def handle(self, record: FakeRecord) -> list[Sent]:
        """What answering `record` sent to the verdict and dead-letter topics."""
        before = len(self.broker.records("verdicts")), len(self.broker.records("dlq"))
        hold = Hold(self.budget, len(record.value or b""))
        try:
            self.loop.run_until_complete(self.route.handle(record, hold))
        finally:
            hold.release()
        new = self.broker.records("verdicts")[before[0] :] + self.broker.records("dlq")[before[1] :]
        for r in new:
            if r.topic == "verdicts":
                jsonschema.validate(json.loads(r.value or b""), VERDICT_SCHEMA)
        return [(r.topic, r.key, r.value, list(r.headers)) for r in new]

    def close(self) -> None:
        self.loop.run_until_complete(self.reloader.stop())
        self.loop.run_until_complete(self.batcher.stop())
        self.loop.run_until_complete(self.pool.close())
        self.loop.run_until_complete(self.fetcher.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def route() -> Iterator[_Wired]:
    wired = _Wired()
    yield wired
    wired.close()


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


_PNG = _png(40)
_B64 = base64.b64encode(_PNG).decode()
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
    route: _Wired, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    record = _record(7, value, key=key, headers=tuple(headers), timestamp=1_700_000_000_000)
    sent = route.handle(record)
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


def test_a_valid_event_gets_a_verdict(route: _Wired) -> None:
    value = json.dumps({"id": "ok-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    sent = route.handle(_record(1, value))
    assert [s[0] for s in sent] == ["verdicts"]
    body = json.loads(sent[0][2] or b"")
    assert body["id"] == "ok-1"
    # The version that decided is the one the verdict and its header name.
    assert body["policy"]["version"] == route.reloader.current.version
    assert dict(sent[0][3])["x-policy-version"] == body["policy"]["version"].encode()


def test_a_verdict_charges_scoring_its_json_and_its_send_to_the_cpu_stages(
    route: _Wired,
) -> None:
    stages = ("score", "serialize", "produce")
    before = {s: route.cpu(s) for s in stages}
    value = json.dumps({"id": "cpu-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    assert [s[0] for s in route.handle(_record(12, value))] == ["verdicts"]
    for stage in stages:
        assert route.cpu(stage) > before[stage], stage


def test_events_answered_together_are_scored_together(
    route: _Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events whose embeddings are ready in the same loop iteration share one policy call."""
    sizes: list[int] = []
    embedding = route.runtime.encode_images([_PNG])[0]
    policy = route.reloader.current
    score = type(policy).score

    def counted(self: Any, embeddings: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(embeddings))
        return score(self, embeddings, *args, **kwargs)

    async def embed(prepared: Any, timings: dict[str, float]) -> Any:
        waiting.append(prepared)
        if len(waiting) == len(records):
            all_waiting.set()
        await ready.wait()
        return embedding, False

    monkeypatch.setattr(type(policy), "score", counted)
    monkeypatch.setattr(route.embedder, "embed", embed)
    ready, all_waiting, waiting = asyncio.Event(), asyncio.Event(), []
    records = [
        _record(20 + i, json.dumps({"id": f"b-{i}", "image_b64": _B64}).encode()) for i in range(5)
    ]

    async def main() -> None:
        holds = [Hold(route.budget, len(r.value or b"")) for r in records]
        handled = [route.route.handle(r, holds[i]) for i, r in enumerate(records)]
        tasks = [asyncio.create_task(h) for h in handled]
        await all_waiting.wait()  # every task has reached its (held) embedding
        ready.set()  # the embeddings are ready together, as a model batch's are
        await asyncio.gather(*tasks)
        for hold in holds:
            hold.release()

    before = len(route.broker.records("verdicts"))
    route.loop.run_until_complete(main())
    assert sizes == [5]
    assert len(route.broker.records("verdicts")) == before + 5


def test_an_unanticipated_exception_is_an_internal_error_dead_letter(
    route: _Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("moderator.service.route.build_verdict", broken)
    value = json.dumps({"id": "bug-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    sent = route.handle(_record(3, value, key=b"k"))
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
    route: _Wired,
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
    sent = route.handle(_record(5, value, headers=headers))
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
    route: _Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in counting")

    monkeypatch.setattr(route.route._sensor, "on_verdict", broken)
    value = json.dumps({"id": "once-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    sent = route.handle(_record(4, value))
    assert [s[0] for s in sent] == ["verdicts"]


def test_an_inference_failure_is_the_services_not_a_dead_letter(
    route: _Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(pixels: Any) -> Any:
        raise InferenceFailed("inference failed: CUDA error")

    monkeypatch.setattr(route.batcher, "embed", failing)
    value = json.dumps({"id": "gpu-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    before = route.answers()
    with pytest.raises(InferenceFailed):
        route.handle(_record(5, value))
    assert route.answers() == before  # nothing published: the event stays unanswered


def test_an_image_fetched_after_a_retry_and_then_refused_counts_its_fetch_attempts(
    route: _Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fetch(url: str) -> Fetched:
        return Fetched(b"not an image at all", url, attempts=2, content_type="image/png")

    monkeypatch.setattr(route.fetcher, "fetch", fetch)
    value = json.dumps({"id": "retried-1", "image_url": "https://img.example/a.png"}).encode()
    sent = route.handle(_record(6, value))
    (out,) = sent
    headers = dict(out[3])
    assert out[0] == "dlq"
    assert headers["x-error-reason"] == b"unsupported_format"
    assert headers["x-attempts"] == b"2"


def test_a_verdict_is_followed_by_its_embedding_and_counted(route: _Wired) -> None:
    value = json.dumps({"id": "emb-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
    counted = {d: route.sample(_VERDICTS, decision=d, surface="none") for d in _DECISIONS}
    (verdict,) = route.handle(_record(8, value))
    body = json.loads(verdict[2] or b"")
    (embedding,) = [r for r in route.broker.records("embeddings") if r.key == b"emb-1"]
    record = json.loads(embedding.value or b"")
    assert record["image_sha256"] == body["image"]["sha256"]
    assert len(record["embedding"]) == route.runtime.embed_dim
    for decision in _DECISIONS:
        now = route.sample(_VERDICTS, decision=decision, surface="none")
        assert now - counted[decision] == (decision == body["decision"])


def test_an_unknown_surface_is_counted_as_other(route: _Wired) -> None:
    value = json.dumps(
        {"id": "srf-1", "image_b64": base64.b64encode(_PNG).decode(), "surface": "nowhere"}
    ).encode()
    unknown = route.sample("moderator_unknown_surfaces_total")
    others = {d: route.sample(_VERDICTS, decision=d, surface="other") for d in _DECISIONS}
    (verdict,) = route.handle(_record(9, value))
    decision = json.loads(verdict[2] or b"")["decision"]
    assert route.sample(_VERDICTS, decision=decision, surface="other") == others[decision] + 1
    assert route.sample("moderator_unknown_surfaces_total") == unknown + 1


@pytest.mark.parametrize("topic", ["verdicts", "dlq", "embeddings"])
def test_a_refused_send_is_the_services_fault_and_escapes(
    route: _Wired, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = {"id": f"refused-{topic}", "image_b64": base64.b64encode(_PNG).decode()}
    value = b"not json" if topic == "dlq" else json.dumps(event).encode()
    publisher = route.route._publisher
    if topic == "embeddings":  # the verdict goes, then its embedding is refused
        send_embedding = publisher.embedding

        async def refused(*args: Any) -> None:
            route.broker.fail_sends = 1
            await send_embedding(*args)

        monkeypatch.setattr(publisher, "embedding", refused)
    else:
        route.broker.fail_sends = 1
    with pytest.raises(PublishFailed, match=topic):
        route.handle(_record(11, value))
    assert route.broker.fail_sends == 0  # the refusal was met, not skipped


def test_with_a_cache_a_repeated_image_is_served_from_it() -> None:
    wired = _Wired(cached=True)
    try:
        value = json.dumps({"id": "c-1", "image_b64": base64.b64encode(_PNG).decode()}).encode()
        first = json.loads(wired.handle(_record(1, value))[0][2] or b"")
        second = json.loads(wired.handle(_record(2, value))[0][2] or b"")
        assert (first["cached"], second["cached"]) == (False, True)
        assert first["decision"] == second["decision"]
        assert wired.cache is not None
        assert wired.cache.hits == 1
    finally:
        wired.close()


def test_a_url_download_is_held_in_the_budget_until_the_event_is_answered(
    route: _Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fetch(url: str) -> Fetched:
        return Fetched(_PNG, url, attempts=1, content_type="image/png")

    monkeypatch.setattr(route.fetcher, "fetch", fetch)
    value = json.dumps({"id": "url-1", "image_url": "https://img.example/a.png"}).encode()
    hold = Hold(route.budget, len(value))
    route.loop.run_until_complete(route.route.handle(_record(10, value), hold))
    assert hold.size == len(value) + len(_PNG)  # the download joined the event's hold
    assert route.budget.used == hold.size
    hold.release()
    assert route.budget.used == 0
