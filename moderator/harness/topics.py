"""Fresh topics for one run (a fault scenario, a benchmark phase): names no other run uses,
created through `moderator.kafka` so the run's TLS and SASL settings apply, and deleted at
the end unless kept.
"""

from __future__ import annotations

from moderator import kafka
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
        configs = {} if max_message_bytes is None else {"max.message.bytes": str(max_message_bytes)}
        await kafka.ensure_topics(settings, [name], configs=configs)
        self.created.append(name)
        return name

    async def delete(self) -> None:
        """Delete every topic this run created."""
        if self.created:
            await kafka.delete_topics(self.settings, self.created)
