"""The Kafka adapter: the only package that imports aiokafka.

- `client`: how every client connects (servers, TLS, SASL); `admin`: topics, readiness, limits.
- `consumer`: the group member `serve` consumes with, and group-less readers for tools;
  `producer`: acks=all sends. Both raise `KafkaFailed`/`PublishFailed` for aiokafka's errors.
  (`make_consumer`/`make_producer` build the raw aiokafka clients inside them, configured the
  same way, for tests that need the client itself.)
- `records`: reads fetched record batches that aiokafka's own reader refuses.
- `offsets` and `commit`: which offsets are finished, and when they are committed.
- `publish`: verdicts, dead letters and embeddings, sized and acknowledged.
- `fake`: an in-memory broker and clients, for tests of the route and the commit loop.
"""

from moderator.kafka.admin import (
    delete_topics,
    ensure_topics,
    max_message_bytes,
    topic_partitions,
    wait_until_ready,
)
from moderator.kafka.client import DEFAULT_MAX_MESSAGE_BYTES, MAX_REQUEST_SIZE, client_options
from moderator.kafka.consumer import (
    GroupConsumer,
    Reader,
    close_reader,
    make_consumer,
    open_reader,
)
from moderator.kafka.producer import Producer, make_producer
from moderator.kafka.types import TP, GroupClient, ProducerClient, Record

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_REQUEST_SIZE",
    "TP",
    "GroupClient",
    "GroupConsumer",
    "Producer",
    "ProducerClient",
    "Reader",
    "Record",
    "client_options",
    "close_reader",
    "delete_topics",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "max_message_bytes",
    "open_reader",
    "topic_partitions",
    "wait_until_ready",
]
