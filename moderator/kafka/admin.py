"""Admin requests: create topics, wait for leaders and the group coordinator, read limits.

Failures to reach the cluster at start-up are `ConfigError`s that name the settings to check;
readiness checks and limit reads degrade to a warning, since the clients retry on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from moderator.errors import ConfigError, KafkaFailed
from moderator.kafka.client import DEFAULT_MAX_MESSAGE_BYTES, client_options
from moderator.kafka.types import TP
from moderator.log import get
from moderator.settings import KafkaSettings

log = get("kafka")


async def _started_admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    """A started admin client; a cluster it cannot reach is a `ConfigError` naming the
    settings to check (the first request of a start-up meets a wrong address first)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise ConfigError(
            f"cannot reach Kafka at {settings.bootstrap_servers} ({exc}); check "
            "MODERATOR_KAFKA__BOOTSTRAP_SERVERS and the security settings (protocol, SASL, CA)"
        ) from exc
    return admin


async def ensure_topics(
    settings: KafkaSettings, topics: list[str], *, configs: Mapping[str, str] | None = None
) -> list[str]:
    """Create missing topics (with topic `configs`, say max.message.bytes) and wait for their
    leaders; returns the ones created. Existing topics are left untouched."""
    admin = await _started_admin(settings)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            new = [
                NewTopic(
                    t,
                    settings.topic_partitions,
                    settings.topic_replication,
                    topic_configs=dict(configs or {}),
                )
                for t in missing
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


async def delete_topics(settings: KafkaSettings, topics: list[str]) -> None:
    """Delete `topics` (benchmark runs clean up the topics they made)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        await admin.delete_topics(topics)
    except KafkaError as exc:
        raise KafkaFailed(f"could not delete {topics}: {type(exc).__name__}: {exc}") from exc
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
    admin = AIOKafkaAdminClient(**client_options(settings))
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


async def topic_partitions(settings: KafkaSettings, topics: list[str]) -> list[TP]:
    """Every partition of `topics`, from fresh metadata (for readers that assign by hand)."""
    producer = AIOKafkaProducer(**client_options(settings))
    try:
        await producer.start()
        return [(t, p) for t in topics for p in sorted(await producer.partitions_for(t))]
    except KafkaError as exc:
        raise KafkaFailed(f"partitions of {topics}: {type(exc).__name__}: {exc}") from exc
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
    admin = await _started_admin(settings)
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
