"""Fresh topics for one run (a fault scenario, a benchmark phase): names no other run uses,
created through `moderator.kafka` so the run's TLS and SASL settings apply, and deleted at
the end unless kept.
"""

from __future__ import annotations

import contextlib

# Until `moderator.kafka` can give a new topic its configs and delete topics, `_create` and
# `_delete` use aiokafka's admin client with the adapter's connection options (TLS, SASL).
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from moderator import kafka
from moderator.errors import ConfigError, KafkaFailed
from moderator.settings import KafkaSettings


class Topics:
    """Topics named `prefix` + a label, created on demand; `created` lists them in order."""

    def __init__(self, settings: KafkaSettings, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix
        self.created: list[str] = []

    async def make(
        self, label: str, *, partitions: int, max_message_bytes: int | None = None
    ) -> str:
        """Create topic `prefix + label` with `partitions`, and with `max_message_bytes` as its
        max.message.bytes where given (records over Kafka's 1 MB default); returns its name
        once every partition has a leader."""
        name = self.prefix + label
        settings = self.settings.model_copy(update={"topic_partitions": partitions})
        if max_message_bytes is None:
            await kafka.ensure_topics(settings, [name])
        else:
            await _create(settings, name, {"max.message.bytes": str(max_message_bytes)})
        self.created.append(name)
        return name

    async def delete(self) -> None:
        """Delete every topic this run created."""
        if self.created:
            await _delete(self.settings, self.created)


async def _create(settings: KafkaSettings, name: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    try:
        await admin.start()
        topic = NewTopic(
            name, settings.topic_partitions, settings.topic_replication, topic_configs=configs
        )
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([topic])
    except KafkaError as exc:
        raise ConfigError(f"could not create topic {name}: {type(exc).__name__}: {exc}") from exc
    finally:
        await admin.close()
    await kafka.wait_until_ready(settings, [name])


async def _delete(settings: KafkaSettings, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    try:
        await admin.start()
        await admin.delete_topics(topics)
    except KafkaError as exc:
        raise KafkaFailed(f"could not delete {topics}: {type(exc).__name__}: {exc}") from exc
    finally:
        await admin.close()
