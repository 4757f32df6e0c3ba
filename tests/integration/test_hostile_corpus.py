"""The hostile-input corpus (hostile_corpus.py) through a real `moderator serve` process.

Every case must get its expected answer (a verdict, or a DLQ record with its reason), and the
service must stay up throughout: no crash, no restart, exit 0 on SIGTERM afterwards, and the
resident memory of its process tree (main process, forkserver, decode worker) under
RSS_BOUND_BYTES at every sample (every 0.2 s).
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from hostile_corpus import (
    DLQ_MAX_MESSAGE_BYTES,
    MAX_IMAGE_BYTES,
    VERDICT,
    VERDICT_MAX_MESSAGE_BYTES,
    Case,
    loopback_cases,
    shape,
    strict_cases,
)
from PIL import Image

from moderator import kafka
from moderator.chaos.scenarios import serve_env
from moderator.errors import FetchBlocked
from moderator.harness.fleet import Fleet
from moderator.harness.imageserver import ImageServer
from moderator.kafka.raw import send_raw
from moderator.pipeline.acquire.fetch import Fetcher, FetchPolicy
from moderator.settings import KafkaSettings

# The service at rest is ~250 MB (model, ORT arenas) plus ~60 MB per decode process; the
# 49 M-pixel PNG adds a 147 MB decode buffer in the worker. 1 GiB leaves room for allocator
# slack and flags anything that scales with a hostile header (a 10^10-pixel claim would not fit).
RSS_BOUND_BYTES = 1024 * 1024 * 1024
ANSWER_TIMEOUT_S = 180.0


@dataclass
class Answers:
    verdicts: dict[str, list[str]] = field(default_factory=dict)  # event id → decisions
    dead: dict[tuple[int, int], list[dict[str, str]]] = field(default_factory=dict)


async def _topics(topic_factory: Callable[..., Any]) -> dict[str, str]:
    return {
        "input": await topic_factory(3, label="hostile-in"),
        "verdicts": await topic_factory(
            1,
            label="hostile-verdicts",
            config={"max.message.bytes": str(VERDICT_MAX_MESSAGE_BYTES)},
        ),
        # Smaller than the input topic's 1 MB: dead-lettering a large record must still work.
        "dlq": await topic_factory(
            1, label="hostile-dlq", config={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
        ),
    }


async def _produce(settings: KafkaSettings, topic: str, cases: list[Case]) -> dict[int, Case]:
    """Send every case; returns input offset (partition 0 only: keys are pinned) → case."""
    producer = kafka.make_producer(settings)
    raw = kafka.make_producer(settings, enable_idempotence=False)  # for `send_raw`
    await producer.start()
    await raw.start()
    sent: dict[int, Case] = {}
    try:
        for case in cases:
            for _ in range(case.copies):
                key = case.key if case.key is not None else case.name.encode()
                if case.raw_headers is not None:
                    record = (key, case.value, case.raw_headers)
                    first = await send_raw(raw, topic, 0, [record], compression=case.compression)
                    sent[first] = case
                    continue
                meta = await producer.send_and_wait(
                    topic, case.value, key=key, headers=case.headers, partition=0
                )
                sent[meta.offset] = case
    finally:
        await producer.stop()
        await raw.stop()
    return sent


async def _collect(
    settings: KafkaSettings, topics: dict[str, str], sent: dict[int, Case], timeout_s: float
) -> Answers:
    reader = await kafka.open_reader(settings, [topics["verdicts"], topics["dlq"]])
    answers = Answers()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not _all_answered(sent, answers) and loop.time() < deadline:
            for r in await reader.poll(0.3):
                if r.topic == topics["verdicts"]:
                    key = (r.key or b"").decode()
                    decision = json.loads(r.value or b"{}")["decision"]
                    answers.verdicts.setdefault(key, []).append(decision)
                else:
                    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers}
                    headers["value-bytes"] = str(len(r.value or b""))
                    where = (
                        int(headers["x-original-partition"]),
                        int(headers["x-original-offset"]),
                    )
                    answers.dead.setdefault(where, []).append(headers)
    finally:
        await reader.close()
    return answers


def _all_answered(sent: dict[int, Case], answers: Answers) -> bool:
    return all(_outcome(offset, case, answers) is not None for offset, case in sent.items())


def _outcome(offset: int, case: Case, answers: Answers) -> str | None:
    if (0, offset) in answers.dead:
        return "dlq:" + answers.dead[(0, offset)][0]["x-error-reason"]
    decisions = answers.verdicts.get(case.event_id or case.name, [])
    return VERDICT if len(decisions) >= case.copies else None


async def _serve_corpus(
    kafka_bootstrap: str,
    redis_url: str,
    topics: dict[str, str],
    cases: list[Case],
    log_dir: Path,
    **env: str,
) -> tuple[dict[int, Case], Answers, Fleet, list[int]]:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    group = f"moderator-hostile-{uuid.uuid4().hex[:8]}"
    environment = serve_env(
        kafka_bootstrap,
        redis_url,
        topics,
        group,
        PIPELINE__MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
        **env,
    )
    fleet = Fleet(environment, log_dir)
    await fleet.scale(1)
    try:
        sent = await _produce(settings, topics["input"], cases)
        answers = await _collect(settings, topics, sent, ANSWER_TIMEOUT_S)
        # Stayed up: the one process never exited and is still serving.
        assert fleet.restarts == 0, f"service crashed: {fleet.crash_codes}\n{fleet.log_tail()}"
        assert fleet.replicas[0].process.poll() is None
    finally:
        codes = await fleet.stop()
    return sent, answers, fleet, codes


def _check(sent: dict[int, Case], answers: Answers, fleet: Fleet, codes: list[int]) -> None:
    wrong = []
    for offset, case in sent.items():
        got = _outcome(offset, case, answers)
        if got != case.expect:
            detail = answers.dead.get((0, offset), [{}])[0].get("x-error-detail", "")
            wrong.append(f"{case.name}: expected {case.expect}, got {got} {detail[:160]}")
    assert not wrong, "\n".join(wrong) + "\n" + fleet.log_tail(3000)
    for case in {c.name: c for c in sent.values() if c.copies > 1}.values():
        decisions = answers.verdicts[case.event_id or case.name]
        assert len(decisions) == case.copies, decisions
        assert len(set(decisions)) == 1, decisions
    assert codes == [0], fleet.log_tail()
    assert 0 < fleet.peak_rss < RSS_BOUND_BYTES, f"peak RSS {fleet.peak_rss / 2**20:.0f} MiB"


async def test_hostile_corpus_with_the_default_ssrf_guard(
    kafka_bootstrap: str, redis_url: str, topic_factory: Callable[..., Any], tmp_path: Path
) -> None:
    topics = await _topics(topic_factory)
    cases = strict_cases(f"hostile-{uuid.uuid4().hex[:6]}")
    assert len({c.name for c in cases}) >= 30
    sent, answers, fleet, codes = await _serve_corpus(
        kafka_bootstrap, redis_url, topics, cases, tmp_path
    )
    _check(sent, answers, fleet, codes)
    # Dead letters too large for the DLQ topic still arrive, without the original bytes.
    for offset, case in sent.items():
        too_large = len(case.value or b"") + 2000 > DLQ_MAX_MESSAGE_BYTES
        if too_large and case.expect != VERDICT and not case.compression:
            record = answers.dead[(0, offset)][0]
            assert record["value-bytes"] == "0", case.name
            assert "dropped" in record["x-error-detail"], record["x-error-detail"]
    print(
        f"hostile corpus: {len(cases)} kinds, {len(sent)} records, all answered as expected; "
        f"peak RSS {fleet.peak_rss / 2**20:.0f} MiB (bound {RSS_BOUND_BYTES / 2**20:.0f} MiB)"
    )


async def test_hostile_image_servers(
    kafka_bootstrap: str, redis_url: str, topic_factory: Callable[..., Any], tmp_path: Path
) -> None:
    topics = await _topics(topic_factory)
    with ImageServer() as server:
        server.images["ok.png"] = _png(shape(96, seed=9))
        cases = loopback_cases(f"hostile-{uuid.uuid4().hex[:6]}", server.base, "ok.png")
        # Loopback image servers are only reachable with the guard opened (tests only).
        sent, answers, fleet, codes = await _serve_corpus(
            kafka_bootstrap,
            redis_url,
            topics,
            cases,
            tmp_path,
            PIPELINE__FETCH_ALLOW_PRIVATE="true",
        )
    _check(sent, answers, fleet, codes)
    for offset, case in sent.items():
        if case.name.endswith(("black-hole", "slowloris", "503")):
            # Transient failures: retried once (FETCH_RETRIES=1), then dead-lettered.
            assert answers.dead[(0, offset)][0]["x-attempts"] == "2", case.name


async def test_redirect_to_a_private_address_is_refused() -> None:
    """A redirect hop is checked like the first URL: here the first hop (127.0.0.1) is allowed
    by `allow_networks`, every internal target it redirects to is not, and none is connected
    to. (The service exposes only `fetch_allow_private`, which opens every range at once, so
    this runs at the fetcher level.)"""
    loopback = ip_network("127.0.0.1/32")
    policy = FetchPolicy(
        timeout_s=2, retries=0, max_bytes=1_000_000, allow_networks=frozenset({loopback})
    )
    with ImageServer() as server:
        server.images["ok.png"] = _png(shape(64))
        async with Fetcher(policy) as fetcher:
            assert (await fetcher.fetch(server.url("/img/ok.png"))).data.startswith(b"\x89PNG")
            for target in (
                "http://169.254.169.254/latest/meta-data/",
                "http://10.0.0.1/a.png",
                "http://127.0.0.2/a.png",
                "http://[::1]/a.png",
                "http://localhost/a.png",
            ):
                with pytest.raises(FetchBlocked):
                    await fetcher.fetch(server.url(f"/redirect?to={target}"))
        assert server.hits["redirect"] == 5


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
