"""The one place that knows aiokafka: client construction, security, topic creation.

Stages never touch Kafka clients directly; `serve`, `submit` and `tail` build their clients
here so SASL/TLS settings apply the same way everywhere, and Kafka's errors are translated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from moderator.errors import ConfigError
from moderator.kafka import records as kafka_records
from moderator.log import get
from moderator.settings import KafkaSettings

log = get("kafka")
# Kafka's default message.max.bytes: the largest record batch a topic takes unless configured.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# The largest record our producers send, whatever a topic would take.
MAX_REQUEST_SIZE = 16 * 1024 * 1024


def _common(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
        "client_id": "moderator",
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        options["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        if not (settings.sasl_mechanism and settings.sasl_username and settings.sasl_password):
            raise ConfigError(
                "MODERATOR_KAFKA__SECURITY_PROTOCOL is SASL_*: set "
                "MODERATOR_KAFKA__SASL_MECHANISM, MODERATOR_KAFKA__SASL_USERNAME and "
                "MODERATOR_KAFKA__SASL_PASSWORD"
            )
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def make_consumer(
    settings: KafkaSettings,
    *topics: str,
    max_decompressed: int = kafka_records.DEFAULT_MAX_DECOMPRESSED,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A group consumer with auto-commit off: offsets are committed only after acks. Fetched
    batches are read by `kafka_records`, so no record's bytes can stop it, and no compressed
    batch inflates past `max_decompressed` bytes."""
    kafka_records.install(max_decompressed)
    options = _common(settings) | {
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.max_poll_records,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "check_crcs": settings.check_crcs,
        "session_timeout_ms": settings.session_timeout_ms,
        "isolation_level": "read_committed",
    }
    return AIOKafkaConsumer(*topics, **(options | overrides))


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all + idempotence: a retried send never duplicates or reorders within a partition
    (unless `idempotent_producer` is off, for brokers that cannot do it)."""
    options = _common(settings) | {
        "acks": "all",
        "enable_idempotence": settings.idempotent_producer,
        "linger_ms": 5,  # a few ms of batching buys far fewer produce requests under load
        "compression_type": None,
        "max_request_size": MAX_REQUEST_SIZE,
    }
    return AIOKafkaProducer(**(options | overrides))


async def ensure_topics(settings: KafkaSettings, topics: list[str]) -> list[str]:
    """Create missing topics and wait for their leaders; returns the ones created. Existing
    topics are left untouched."""
    admin = AIOKafkaAdminClient(**_common(settings))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise ConfigError(
            f"cannot reach Kafka at {settings.bootstrap_servers} ({exc}); check "
            "MODERATOR_KAFKA__BOOTSTRAP_SERVERS and the security settings (protocol, SASL, CA)"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            new = [
                NewTopic(t, settings.topic_partitions, settings.topic_replication) for t in missing
            ]
            # Another replica may create it between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            log.info("created topics", extra={"fields": {"topics": missing}})
            await wait_until_ready(settings, missing)
        return missing
    except KafkaError as exc:
        raise ConfigError(f"could not create topics {topics}: {exc}") from exc
    finally:
        await admin.close()


async def wait_until_ready(
    settings: KafkaSettings,
    topics: list[str],
    *,
    group_id: str | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Wait until every partition of `topics` has a leader and, for a group, its coordinator
    answers; False if that did not happen within `timeout_s` (clients retry on their own).

    A broker just started, or topics just created, answer "no leader" and "coordinator not
    available" for a few seconds. Clients retry through that, but log each retry as an error:
    waiting here first keeps a healthy start-up's log free of errors.
    """
    admin = AIOKafkaAdminClient(**_common(settings))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        await admin.start()
        while True:
            if await _leaders_ready(admin, topics) and await _coordinator_ready(admin, group_id):
                return True
            if loop.time() > deadline:
                log.warning(
                    "Kafka is not ready yet; starting anyway",
                    extra={"fields": {"topics": topics, "group": group_id}},
                )
                return False
            await asyncio.sleep(0.2)
    except KafkaError as exc:
        log.warning("could not check Kafka's readiness", extra={"fields": {"error": str(exc)}})
        return False
    finally:
        await admin.close()


async def _leaders_ready(admin: AIOKafkaAdminClient, topics: list[str]) -> bool:
    described = await admin.describe_topics(topics)
    if {t["topic"] for t in described} != set(topics):
        return False
    return all(
        not topic["error_code"]
        and topic["partitions"]
        and all(p["leader"] >= 0 and not p["error_code"] for p in topic["partitions"])
        for topic in described
    )


async def _coordinator_ready(admin: AIOKafkaAdminClient, group_id: str | None) -> bool:
    if group_id is None:
        return True
    try:
        await admin.find_coordinator(group_id)
    except KafkaError:
        return False
    return True


async def topic_partitions(settings: KafkaSettings, topics: list[str]) -> list[TopicPartition]:
    """Every partition of `topics`, from fresh metadata (for readers that assign by hand)."""
    producer = AIOKafkaProducer(**_common(settings))
    await producer.start()
    try:
        return [
            TopicPartition(t, p) for t in topics for p in sorted(await producer.partitions_for(t))
        ]
    finally:
        await producer.stop()


async def max_message_bytes(settings: KafkaSettings, topics: list[str]) -> dict[str, int]:
    """The largest record batch each of `topics` accepts (its max.message.bytes), asked of the
    brokers in one request.

    A record over it is refused by the broker, and with idempotence on, aiokafka's producer
    then fails every later send to that partition (OutOfOrderSequenceNumber), so publishers
    check sizes against this before sending. Kafka's default where the brokers do not say.
    """
    limits = dict.fromkeys(topics, DEFAULT_MAX_MESSAGE_BYTES)
    admin = AIOKafkaAdminClient(**_common(settings))
    await admin.start()
    try:
        wanted = [
            ConfigResource(ConfigResourceType.TOPIC, t, configs={"max.message.bytes": None})
            for t in dict.fromkeys(topics)
        ]
        for response in await admin.describe_configs(wanted):
            for resource in response.to_object()["resources"]:
                for entry in resource["config_entries"]:
                    if entry["config_names"] == "max.message.bytes":
                        limits[resource["resource_name"]] = int(entry["config_value"])
    except (KafkaError, KeyError, ValueError) as exc:
        log.warning(
            "could not read max.message.bytes; assuming Kafka's default",
            extra={"fields": {"topics": topics, "error": str(exc)}},
        )
    finally:
        await admin.close()
    return limits


async def open_reader(
    settings: KafkaSettings, topics: list[str], *, from_start: bool = True, **overrides: Any
) -> AIOKafkaConsumer:
    """A started consumer assigned every partition of `topics`, with no group.

    For tools that watch output topics (demo, benchmarks, the fault suite, tests): without a
    group it never joins, rebalances or commits anything of the service's. Positioned at the
    oldest records (`from_start`) or at the current end, resolved before this returns.
    """
    parts = await topic_partitions(settings, topics)
    consumer = make_consumer(settings, group_id=None, **overrides)
    await consumer.start()
    consumer.assign(parts)
    # A topic created a moment ago may name a leader that is not leading yet: aiokafka
    # retries the offset lookup, and each retry is not worth an error line.
    with _quiet_leader_retries():
        if from_start:
            await consumer.seek_to_beginning(*parts)
        else:
            await consumer.seek_to_end(*parts)
        for tp in parts:
            await consumer.position(tp)
    return consumer


class _LeaderRetries(logging.Filter):
    """Drops aiokafka's error line for an offset lookup that it retries after a leader change."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "NotLeaderForPartitionError" in text or "LeaderNotAvailableError" in text:
            log.debug("offset lookup retried: no leader yet", extra={"fields": {"why": text}})
            return False
        return True


@contextlib.contextmanager
def _quiet_leader_retries() -> Iterator[None]:
    fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
    quiet = _LeaderRetries()
    fetcher_log.addFilter(quiet)
    try:
        yield
    finally:
        fetcher_log.removeFilter(quiet)


async def close_reader(task: asyncio.Task[Any] | None, consumer: AIOKafkaConsumer | None) -> None:
    """Stop a reader started on `open_reader`: cancel the task draining it, then the consumer."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if consumer is not None:
        await consumer.stop()
