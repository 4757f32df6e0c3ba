"""The service's Prometheus metrics, on a registry of their own (one per service instance).

Names use the `moderator_` prefix and base units (seconds, bytes). The Grafana dashboard and
alert rules query exactly these names; a test checks them against this registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets from 1 ms to 30 s: inference batches sit near the bottom, URL fetches and
# end-to-end latency under lag near the top.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Every metric `serve` exports. Built once and passed to the stages that record."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "moderator_events_consumed", "Events read from the input topic.", ["topic"], registry=r
        )
        self.verdicts = Counter(
            "moderator_verdicts",
            "Verdicts published, by decision.",
            ["decision", "surface"],
            registry=r,
        )
        self.matches = Counter(
            "moderator_concept_matches",
            "Concept matches in published verdicts (shadow matches labelled mode=shadow).",
            ["concept", "action", "mode", "surface"],
            registry=r,
        )
        self.dlq = Counter(
            "moderator_dlq_records",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "moderator_stage_duration_seconds",
            "Time per pipeline stage (prepare, acquire, decode, queue, inference, score, publish;"
            " per GPU-decoding batch: gpu_decode, gpu_wait, gpu_finish).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cpu_seconds = Counter(
            "moderator_cpu_seconds",
            "CPU time by stage of the data path (moderator.cpu lists them) and where it was"
            " spent: the event loop, another thread of the process, or a decode process.",
            ["stage", "where"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "moderator_event_loop_lag_seconds",
            "How late the event loop woke from a 0.1 s sleep, sampled ten times a second.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "moderator_end_to_end_latency_seconds",
            "From the event's Kafka timestamp to its verdict or DLQ record being acknowledged.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "moderator_batch_size",
            "Images per inference batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "moderator_in_flight_events", "Events received and not yet answered.", registry=r
        )
        self.paused = Gauge(
            "moderator_paused_partitions", "Partitions paused for backpressure.", registry=r
        )
        self.lag = Gauge(
            "moderator_consumer_lag",
            "Records between the consumer position and the partition end.",
            ["topic", "partition"],
            registry=r,
        )
        self.cache = Counter(
            "moderator_cache_requests",
            "Embedding cache lookups by kind (img, txt) and result (hit, miss, invalid: an entry "
            "of the wrong size or not a finite unit vector, served as a miss; error).",
            ["kind", "result"],
            registry=r,
        )
        self.cache_up = Gauge(
            "moderator_cache_available", "1 when Redis answered the last command.", registry=r
        )
        self.reloads = Counter(
            "moderator_policy_reloads",
            "Policy (re)loads by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.policy_info = Info(
            "moderator_policy", "The policy in force (name, version).", registry=r
        )
        self.policy_reload_failing = Gauge(
            "moderator_policy_reload_failing",
            "1 while the newest policy on disk fails to load and the last good one is in force.",
            registry=r,
        )
        self.model_info = Info(
            "moderator_model", "The loaded model (id, sha256, provider, precision).", registry=r
        )
        self.decodes = Counter(
            "moderator_decodes",
            "Images decoded, by where (cpu, gpu); gpu_refused counts JPEGs the GPU handed back "
            "to the CPU.",
            ["path"],
            registry=r,
        )
        self.budget_used = Gauge(
            "moderator_memory_budget_used_bytes",
            "Image bytes held against pipeline.memory_budget_bytes (records in flight, "
            "downloads); at the budget the consumer pauses.",
            registry=r,
        )
        self.decode_pool_replaced = Counter(
            "moderator_decode_pool_replaced",
            "Decode pools replaced after a process died (main: the serving pool; quarantine: "
            "the one-process pool that retries the events a death interrupted).",
            ["pool"],
            registry=r,
        )
        self.verdicts_truncated = Counter(
            "moderator_verdicts_truncated",
            "Verdicts published without their echoed fields (metadata, source): with them they "
            "were over the verdict topic's max.message.bytes.",
            registry=r,
        )
        self.unknown_surfaces = Counter(
            "moderator_unknown_surfaces",
            "Events from a surface no concept of the policy names; every concept applies to "
            "them (as to events without a surface).",
            registry=r,
        )
        self.ready = Gauge("moderator_ready", "1 when /readyz answers ready.", registry=r)
        self.commits = Counter(
            "moderator_offset_commits",
            "Offset commits by result (ok, failed).",
            ["result"],
            registry=r,
        )
