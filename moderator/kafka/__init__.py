"""The Kafka adapter: the only package that imports aiokafka.

- `client`: consumers, producers and admin requests, built with one set of security settings;
  aiokafka's errors are translated here.
- `records`: reads fetched record batches that aiokafka's own reader refuses.
- `offsets`: which offsets are finished and may be committed.
- `publish`: verdicts, dead letters and embeddings, sized and acknowledged.
"""

from moderator.kafka.client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_REQUEST_SIZE,
    close_reader,
    ensure_topics,
    make_consumer,
    make_producer,
    max_message_bytes,
    open_reader,
    topic_partitions,
    wait_until_ready,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_REQUEST_SIZE",
    "close_reader",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "max_message_bytes",
    "open_reader",
    "topic_partitions",
    "wait_until_ready",
]
