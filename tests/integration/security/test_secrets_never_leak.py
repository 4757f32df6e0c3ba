"""`moderator serve` over SASL_SSL Kafka and an ACL + TLS Redis: it works, and no secret ever
reaches its logs (JSON, DEBUG), its verdicts or its dead letters, on the good path and on
the failure paths that are most tempted to print a connection string."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from secure_services import SecureKafka, SecureRedis

from moderator import kafka
from moderator.chaos.scenarios import REPO_ROOT
from moderator.chaos.workload import inline_workload
from moderator.harness.fleet import Fleet, start_serve
from moderator.settings import KafkaSettings


def _env(
    kafka_: SecureKafka, redis_url: str, topics: dict[str, str], **extra: str
) -> dict[str, str]:
    return {
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": kafka_.bootstrap,
        "MODERATOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "MODERATOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "MODERATOR_KAFKA__SASL_USERNAME": "moderator",
        "MODERATOR_KAFKA__SASL_PASSWORD": kafka_.password,
        "MODERATOR_KAFKA__SSL_CAFILE": str(kafka_.ca),
        "MODERATOR_KAFKA__GROUP_ID": f"secure-{uuid.uuid4().hex[:8]}",
        "MODERATOR_KAFKA__INPUT_TOPIC": topics["input"],
        "MODERATOR_KAFKA__VERDICT_TOPIC": topics["verdicts"],
        "MODERATOR_KAFKA__DLQ_TOPIC": topics["dlq"],
        "MODERATOR_KAFKA__TOPIC_PARTITIONS": "2",
        "MODERATOR_KAFKA__SESSION_TIMEOUT_MS": "10000",
        "MODERATOR_REDIS__URL": redis_url,
        # A TLS handshake while the model loads on 2 busy cores can exceed the 0.5 s default.
        "MODERATOR_REDIS__TIMEOUT_S": "3",
        "MODERATOR_MODEL__PROVIDERS": '["cpu"]',
        "MODERATOR_POLICY__PATH": str(REPO_ROOT / "policies" / "demo.yaml"),
        "MODERATOR_PIPELINE__DECODE_WORKERS": "1",
        "MODERATOR_HTTP__HOST": "127.0.0.1",
        "MODERATOR_HTTP__PORT": "0",
        "MODERATOR_LOG__LEVEL": "DEBUG",
        "MODERATOR_LOG__JSON_FORMAT": "true",
        **extra,
    }


def _topics() -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {k: f"secure-{run}-{k}" for k in ("input", "verdicts", "dlq")}


async def _answers(
    settings: KafkaSettings, topics: dict[str, str], ids: set[str], timeout_s: float
) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """Every record on the verdict and DLQ topics, once all `ids` are answered."""
    out: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    parts: list[object] = []
    while not parts and loop.time() < deadline:  # the service creates the topics
        try:
            parts = list(
                await kafka.topic_partitions(settings, [topics["verdicts"], topics["dlq"]])
            )
        except Exception:
            await asyncio.sleep(1)
    reader = await kafka.open_reader(settings, [topics["verdicts"], topics["dlq"]])
    try:
        seen: set[str] = set()
        while not ids <= seen and loop.time() < deadline:
            for r in await reader.poll(0.5):
                key = (r.key or b"").decode()
                seen.add(key)
                out.append((r.topic, r.value or b"", [(k, v or b"") for k, v in r.headers]))
        assert ids <= seen, f"unanswered: {sorted(ids - seen)[:5]}"
    finally:
        await reader.close()
    return out


def _leaks(text: str | bytes, *secrets_: str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s[:4] + "…" for s in secrets_ if s.encode() in data]


async def test_service_over_sasl_ssl_and_redis_acl_tls_leaks_no_secret(
    secure_kafka: SecureKafka, secure_redis: SecureRedis, tmp_path: Path
) -> None:
    topics = _topics()
    url_password = secrets.token_urlsafe(12)
    env = _env(secure_kafka, secure_redis.url(), topics)
    settings = secure_kafka.settings()
    fleet = Fleet(env, tmp_path)
    work = inline_workload(20, f"secure-{uuid.uuid4().hex[:6]}", seed=3, broken_every=0)
    creds_id = f"creds-{uuid.uuid4().hex[:6]}"
    await fleet.scale(1)
    try:
        await _wait_for_topic(settings, topics["input"])
        producer = kafka.make_producer(settings)
        await producer.start()
        try:
            for event in work.events:
                await producer.send_and_wait(topics["input"], event.value, key=event.id.encode())
            body = {"id": creds_id, "image_url": f"https://bob:{url_password}@img.example/a.png"}
            await producer.send_and_wait(
                topics["input"], json.dumps(body).encode(), key=creds_id.encode()
            )
        finally:
            await producer.stop()
        answers = await _answers(settings, topics, work.ids | {creds_id}, 120)
    finally:
        codes = await fleet.stop()
    log = fleet.log_tail(10**7)
    assert codes == [0], log[-3000:]
    kinds = {topic for topic, _, _ in answers}
    assert kinds == {topics["verdicts"], topics["dlq"]}
    # The cache really went through the ACL user over TLS.
    client = aioredis.Redis.from_url(secure_redis.url())
    try:
        assert [k async for k in client.scan_iter(match="moderator:img:*")]
    finally:
        await client.aclose()
    secrets_ = (secure_kafka.password, secure_redis.password, url_password)
    assert not _leaks(log, *secrets_), "a secret is in the service log"
    assert '"logger": "moderator.service"' in log  # the log is really there (JSON, DEBUG)
    for topic, value, headers in answers:
        assert not _leaks(b"".join(v for _, v in headers), *secrets_), headers
        if topic == topics["verdicts"]:
            assert not _leaks(value, *secrets_)
        # A dead letter carries the original event as sent; its producer put the URL there.
    detail = next(dict(h)["x-error-detail"] for t, _, h in answers if t == topics["dlq"]).decode()
    assert "credentials are refused" in detail


async def _wait_for_topic(settings: KafkaSettings, topic: str) -> None:
    for _ in range(60):
        try:
            if await kafka.topic_partitions(settings, [topic]):
                return
        except Exception:
            pass
        await asyncio.sleep(1)
    raise AssertionError(f"the service never created {topic}")


async def test_wrong_credentials_are_not_logged(
    secure_kafka: SecureKafka, secure_redis: SecureRedis, tmp_path: Path
) -> None:
    wrong_redis = secrets.token_urlsafe(12)
    wrong_kafka = secrets.token_urlsafe(12)
    # Kafka refuses: the service cannot start and says so, without the password.
    env = _env(
        secure_kafka,
        secure_redis.url(wrong_redis),
        _topics(),
        MODERATOR_KAFKA__SASL_PASSWORD=wrong_kafka,
    )
    process = start_serve(env, tmp_path / "wrong-kafka.log")
    assert await asyncio.to_thread(process.wait, 120) != 0
    # Redis refuses: the service runs uncached and says so, without the password.
    fleet = Fleet(_env(secure_kafka, secure_redis.url(wrong_redis), _topics()), tmp_path)
    await fleet.scale(1)
    try:
        assert await fleet.wait_logged("redis unavailable", timeout_s=90)
    finally:
        assert await fleet.stop() == [0]
    logs = (tmp_path / "wrong-kafka.log").read_text() + fleet.log_tail(10**7)
    assert "AuthenticationError" in logs or "invalid username-password" in logs
    assert not _leaks(logs, wrong_redis, wrong_kafka, secure_redis.password)


def test_settings_command_masks_secrets(
    secure_kafka: SecureKafka, secure_redis: SecureRedis
) -> None:
    env = {**os.environ, **_env(secure_kafka, secure_redis.url(), _topics())}
    shown = subprocess.run(
        [sys.executable, "-m", "moderator", "settings"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "sasl_password" in shown.stdout
    assert not _leaks(shown.stdout + shown.stderr, secure_kafka.password, secure_redis.password)
