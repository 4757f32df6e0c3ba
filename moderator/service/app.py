"""`moderator serve`: events in from Kafka, verdicts out, at-least-once.

Per record: parse → acquire (inline or URL) → image sha256 → cached embedding, or decode (process
pool; without a cache, an inline record is parsed, hashed and decoded there in one trip; with
GPU decoding on, JPEGs skip the CPU decode and are decoded on the GPU with their batch) →
batch → embed (one inference thread per device) → score with the policy in force → publish
verdict (or DLQ record) and await its ack → mark the offset finished. A commit loop commits
each partition's contiguous finished prefix (see `offsets.py`, `publish.py` and
docs/delivery.md). The event loop only routes: decode, inference and fetch waits run elsewhere,
so heartbeats and rebalances keep going under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from moderator import kafka
from moderator.cache.keys import image_namespace
from moderator.cache.redis import RedisEmbeddingCache
from moderator.embed import ClipRuntime, load_model
from moderator.errors import (
    ConfigError,
    EventError,
    InvalidEmbedding,
    ModeratorError,
    Reason,
    ServiceFault,
    TooLarge,
)
from moderator.kafka import records as kafka_records
from moderator.kafka.offsets import OffsetTracker
from moderator.kafka.publish import Failure, Publisher, verdict_headers
from moderator.log import configure, get
from moderator.pipeline.acquire.fetch import Fetcher, FetchPolicy
from moderator.pipeline.batch import Batcher, DeviceInfer, NotDecoded
from moderator.pipeline.budget import MemoryBudget
from moderator.pipeline.decode.cpu import PreprocessSpec, decode_image
from moderator.pipeline.decode.gpu import GpuJpegDecoder, gpu_eligible
from moderator.pipeline.decode.pool import DecodePool
from moderator.pipeline.decode.prepare import prepare_record
from moderator.pipeline.events import ImageEvent, parse_event
from moderator.policy.reload import PolicyReloader
from moderator.service import loop_lag
from moderator.service.http import HealthServer
from moderator.service.metrics import Metrics
from moderator.service.verdict import build_verdict
from moderator.settings import Settings, load_settings, unknown_env_vars
from moderator.types import Pixels

log = get("service")
_COMMIT_INTERVAL_S = 1.0  # with max_poll_records finished events, bounds re-delivery
_LAG_INTERVAL_S = 5.0
# JSON around an inline image: the id, metadata (≤ 64 KiB as JSON, up to 6× when escaped)
# and the other fields. A record value over base64(limit) plus this is refused unparsed.
_JSON_ENVELOPE_BYTES = 512 * 1024
_TP = tuple[str, int]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service.partitions_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._service.partitions_assigned({(tp.topic, tp.partition) for tp in assigned})


@dataclass(frozen=True, slots=True)
class _Answered:
    """An event whose verdict the broker acknowledged."""

    event: ImageEvent
    verdict: dict[str, Any]
    embedding: np.ndarray
    image_sha: str
    truncated: bool


@dataclass(frozen=True, slots=True)
class _GpuJpeg:
    """Image bytes a decode process already found fit for the GPU decoder (`gpu_eligible`)."""

    data: bytes


class Service:
    """One consumer-group member. `run()` returns the process exit code."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.tracker = OffsetTracker()
        self._tasks: dict[_TP, set[asyncio.Task[None]]] = defaultdict(set)
        self.budget = MemoryBudget(settings.pipeline.memory_budget_bytes)
        self._held: dict[asyncio.Task[None], int] = {}  # budget bytes each event holds
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._joined = False
        self._paused = False
        self._last_poll = time.monotonic()
        self._finished_since_commit = 0  # events answered since the last commit round
        self._runtimes: list[ClipRuntime] = []
        self._cache: RedisEmbeddingCache | None = None
        self._reloader: PolicyReloader | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._publisher: Publisher | None = None
        self._fetcher: Fetcher | None = None
        self._batcher: Batcher | None = None
        self._decode_pool: DecodePool | None = None
        self._spec: PreprocessSpec | None = None
        self._gpu_decoders: list[GpuJpegDecoder] = []
        self.http: HealthServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful drain (SIGTERM/SIGINT)."""
        if not self._stopping.is_set():
            log.info("stopping: draining in-flight events")
            self._stopping.set()

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = []
        if not self._runtimes:
            reasons.append("model not loaded")
        if self._reloader is None or not self._reloader.loaded:
            reasons.append("policy not compiled")
        if not self._joined:
            reasons.append("consumer has not joined the group")
        if self._stopping.is_set():
            reasons.append("draining")
        return not reasons, reasons

    def liveness(self) -> tuple[bool, str]:
        # The answer itself proves the loop runs; a consumer loop stuck for minutes does not.
        idle = time.monotonic() - self._last_poll
        limit = max(60.0, self.settings.kafka.session_timeout_ms / 1000)
        if self._consumer is not None and idle > limit:
            return False, f"consumer loop has not polled for {idle:.0f} s"
        return True, "ok"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        s = self.settings
        self.http = HealthServer(self.metrics, self.readiness, self.liveness)
        await self.http.start(s.http.host, s.http.port)
        watching: asyncio.Task[None] | None = None
        try:
            await self._start()
            # From here: start-up (model loads, warm-ups) would only blur the serving figure.
            watching = asyncio.create_task(loop_lag.watch(self.metrics.loop_lag.observe))
            try:
                await self._consume()
            except Exception as exc:  # the consume loop itself failed: stop, but commit first
                self._fatal = exc
            await self._drain()
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            await self._close()
        if self._fatal is not None:
            log.error("stopped on a fatal error", exc_info=self._fatal)
            return 1
        log.info("stopped cleanly")
        return 0

    async def _start(self) -> None:
        s = self.settings
        await self._load_models()
        primary = self._runtimes[0]
        self._spec = PreprocessSpec(
            image_size=primary.image_size,
            resize_shortest_edge=primary.manifest.resize_shortest_edge,
            max_bytes=s.pipeline.max_image_bytes,
            max_pixels=s.pipeline.max_image_pixels,
            allowed_formats=frozenset(f.upper() for f in s.pipeline.allowed_formats),
        )
        if s.redis.enabled:
            self._cache = RedisEmbeddingCache(
                s.redis.url.get_secret_value(),
                timeout_s=s.redis.timeout_s,
                on_result=self._cache_result,
                dim=primary.embed_dim,
            )
            await self._cache.ping()
        self._reloader = PolicyReloader(
            s.policy.path,
            primary,
            cache=self._cache,
            interval_s=s.policy.reload_interval_s,
            text_ttl_s=s.redis.text_ttl_s,
            on_result=self._policy_result,
        )
        await self._reloader.start()
        workers = s.pipeline.decode_workers or os.cpu_count() or 1
        t = time.monotonic()
        self._decode_pool = DecodePool(
            workers,
            self._spec,
            on_replaced=lambda which: self.metrics.decode_pool_replaced.labels(which).inc(),
        )
        await self._decode_pool.start()
        log.info(
            "decode processes started",
            extra={"fields": {"processes": workers, "seconds": round(time.monotonic() - t, 2)}},
        )
        self._fetcher = Fetcher(FetchPolicy.from_settings(s.pipeline))
        # Off the loop: building and warming a decoder takes about a second.
        await asyncio.to_thread(self._open_gpu_decoders)
        device_infers: list[DeviceInfer | None] = [
            DeviceInfer(
                decode=decoder.decode,
                finish=partial(decoder.embed_decoded, encode=runtime.encode_device_pixels),
            )
            for decoder, runtime in zip(self._gpu_decoders, self._runtimes, strict=False)
        ]  # one per runtime, or none at all
        self._batcher = Batcher(
            [rt.encode_pixels for rt in self._runtimes],
            device_infers=device_infers or None,
            max_batch=s.pipeline.max_batch,
            max_wait_s=s.pipeline.max_wait_ms / 1000,
            on_batch=self._batch_done,
            on_stage=self._batch_stage_done,
        )
        self._batcher.start()
        topics = [s.kafka.input_topic, s.kafka.verdict_topic, s.kafka.dlq_topic]
        if s.kafka.embeddings_topic:
            topics.append(s.kafka.embeddings_topic)
        if s.kafka.create_topics:
            await kafka.ensure_topics(s.kafka, topics)
        # Every output topic's record limit: a record over it would wedge the producer.
        limits = await kafka.max_message_bytes(s.kafka, topics[1:])
        producer = kafka.make_producer(s.kafka)
        await producer.start()
        self._publisher = Publisher(producer, s.kafka.verdict_topic, s.kafka.dlq_topic, limits)
        self._producer = producer
        await kafka.wait_until_ready(s.kafka, [s.kafka.input_topic], group_id=s.kafka.group_id)
        self._consumer = kafka.make_consumer(
            s.kafka,
            max_decompressed=min(
                kafka_records.DEFAULT_MAX_DECOMPRESSED, s.pipeline.memory_budget_bytes // 4
            ),
        )
        self._consumer.subscribe([s.kafka.input_topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info(
            "serving",
            extra={
                "fields": {
                    "input": s.kafka.input_topic,
                    "group": s.kafka.group_id,
                    "model": primary.model_id,
                    "provider": primary.provider,
                    "policy": self._reloader.current.version,
                }
            },
        )

    def _open_gpu_decoders(self) -> None:
        """One GPU JPEG decoder per runtime, built and warmed up (`GpuJpegDecoder.warm_up`), as
        `pipeline.gpu_decode` asks: "auto" goes on without them (CPU decoding) and says why, at
        INFO, or WARNING if a decoder started and then failed; "on" refuses to start."""
        assert self._spec is not None
        mode = self.settings.pipeline.gpu_decode
        if mode == "off":
            return
        started = time.monotonic()
        try:
            if any(rt.provider == "cpu" for rt in self._runtimes):
                raise ConfigError("the model runs on the CPU")
            for runtime in self._runtimes:
                decoder = GpuJpegDecoder(
                    self._spec,
                    device_id=int(runtime.info()["device_id"]),
                    max_batch=self.settings.pipeline.max_batch,
                )
                self._gpu_decoders.append(decoder)
                decoder.warm_up(runtime.encode_device_pixels)
        except ModeratorError as exc:
            started_one = bool(self._gpu_decoders)  # then it failed on the GPU, not before
            for decoder in self._gpu_decoders:
                decoder.close()
            self._gpu_decoders.clear()
            if mode == "on":
                raise ConfigError(f"pipeline.gpu_decode is on, but: {exc}") from exc
            # A decoder that started and then failed points at the GPU: worth a warning.
            report = log.warning if started_one else log.info
            report("JPEGs decode on the CPU", extra={"fields": {"why": str(exc)}})
            return
        fields = {"gpus": len(self._gpu_decoders), "ready_s": round(time.monotonic() - started, 2)}
        log.info("JPEGs decode on the GPU", extra={"fields": fields})

    async def _load_models(self) -> None:
        s = self.settings.model
        first = await asyncio.to_thread(
            load_model,
            s.path,
            providers=s.providers,
            device_id=s.device_ids[0],
            intra_op_threads=s.intra_op_threads,
            verify=s.verify_hashes,
            max_batch=self.settings.pipeline.max_batch,
            attention=s.attention_kernel,
            cuda_graphs=s.cuda_graphs,
        )
        self._runtimes.append(first)
        info = first.info()
        # More than one runtime only pays when each has its own GPU.
        if first.provider != "cpu":
            for device in s.device_ids[1:]:
                self._runtimes.append(
                    await asyncio.to_thread(
                        load_model,
                        s.path,
                        providers=s.providers,
                        device_id=device,
                        intra_op_threads=s.intra_op_threads,
                        verify=False,
                        max_batch=self.settings.pipeline.max_batch,
                        attention=s.attention_kernel,
                        cuda_graphs=s.cuda_graphs,
                    )
                )
        self.metrics.model_info.info({k: str(v) for k, v in info.items()})

    async def _close(self) -> None:
        for closer in (
            self._consumer.stop() if self._consumer else None,
            self._producer.stop() if getattr(self, "_producer", None) else None,
            self._batcher.stop() if self._batcher else None,
            self._reloader.stop() if self._reloader else None,
            self._fetcher.aclose() if self._fetcher else None,
            self._cache.aclose() if self._cache else None,
            self.http.stop() if self.http else None,
        ):
            if closer is None:
                continue
            try:
                await closer
            except Exception:  # closing must go on for the rest
                log.exception("error while closing")
        for decoder in self._gpu_decoders:
            decoder.close()
        if self._decode_pool is not None:
            await self._decode_pool.close()

    # -- consuming -------------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        s = self.settings
        next_commit = time.monotonic() + _COMMIT_INTERVAL_S
        next_lag = time.monotonic()
        while not self._stopping.is_set():
            self._last_poll = time.monotonic()
            try:
                batches = await consumer.getmany(
                    timeout_ms=100, max_records=s.kafka.max_poll_records
                )
            except KafkaError as exc:
                log.warning("poll failed; retrying", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                for record in records:
                    self._accept(tp, record)
            self._backpressure()
            now = time.monotonic()
            # Every second, or sooner once a poll's worth has finished since the last commit:
            # at hundreds of events per second a second of work is more than in-flight events,
            # and all of it would be answered again after a crash.
            if now >= next_commit or self._finished_since_commit >= s.kafka.max_poll_records:
                await self._commit()
                next_commit = now + _COMMIT_INTERVAL_S
            if now >= next_lag:
                self._record_lag()
                next_lag = now + _LAG_INTERVAL_S

    def _accept(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        key = (tp.topic, tp.partition)
        self.tracker.received(tp.topic, tp.partition, record.offset)
        self.metrics.events.labels(tp.topic).inc()
        task = asyncio.create_task(
            self._handle(record), name=f"event-{tp.partition}-{record.offset}"
        )
        tasks = self._tasks[key]
        tasks.add(task)
        size = len(record.value or b"") + len(record.key or b"")
        size += sum(len(name) + len(value or b"") for name, value in record.headers)
        self.budget.charge(size)
        self._held[task] = size
        task.add_done_callback(lambda t: self._task_done(key, t))
        self.metrics.in_flight.set(self.tracker.in_flight())
        self.metrics.budget_used.set(self.budget.used)

    def _task_done(self, key: _TP, task: asyncio.Task[None]) -> None:
        self._tasks[key].discard(task)
        self.budget.release(self._held.pop(task, 0))
        self.metrics.in_flight.set(self.tracker.in_flight())
        self.metrics.budget_used.set(self.budget.used)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._fatal is None:
            # Not the event's fault (Kafka unreachable past retries, inference broken):
            # stop without committing it, so a restart processes it again.
            self._fatal = exc
            log.error("fatal error; stopping", exc_info=exc)
            self.stop()

    def _backpressure(self) -> None:
        assert self._consumer is not None
        limit = self.settings.pipeline.max_in_flight
        in_flight = self.tracker.in_flight()
        assigned = self._consumer.assignment()
        budget = self.budget
        if not self._paused and (in_flight >= limit or budget.spent) and assigned:
            self._consumer.pause(*assigned)
            self._paused = True
            self.metrics.paused.set(len(assigned))
        elif self._paused and in_flight <= limit // 2 and budget.used <= budget.limit // 2:
            self._consumer.resume(*assigned)
            self._paused = False
            self.metrics.paused.set(0)

    async def _commit(self, only: set[_TP] | None = None) -> None:
        assert self._consumer is not None
        if only is None:
            self._finished_since_commit = 0
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        scope = assigned if only is None else only
        offsets = self.tracker.committable(scope)
        if not offsets:
            return
        try:
            await self._consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance or broker blip: the work stays uncommitted and is re-delivered.
            self.metrics.commits.labels("failed").inc()
            log.warning("offset commit failed", extra={"fields": {"error": str(exc)}})
            return
        self.tracker.mark_committed(offsets)
        self.metrics.commits.labels("ok").inc()

    def _record_lag(self) -> None:
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is None:
                continue
            done = self.tracker.committed_point(tp.topic, tp.partition)
            lag = end - done if done is not None else end
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))

    async def partitions_revoked(self, revoked: set[_TP]) -> None:
        """Commit what finished, abandon the rest: the next owner re-processes it."""
        if self._consumer is not None and revoked:
            await self._commit(revoked)
        for key in revoked:
            for task in list(self._tasks.pop(key, ())):
                task.cancel()
            # A revoked partition's lag is its next owner's to report.
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(key[0], str(key[1]))
        self.tracker.forget(revoked)
        self._paused = False
        log.info("partitions revoked", extra={"fields": {"partitions": sorted(revoked)}})

    def partitions_assigned(self, assigned: set[_TP]) -> None:
        self._joined = True
        log.info("partitions assigned", extra={"fields": {"partitions": sorted(assigned)}})

    async def _drain(self) -> None:
        """Let in-flight events finish within the deadline, then commit what finished."""
        deadline = self.settings.pipeline.drain_timeout_s
        pending = [t for tasks in self._tasks.values() for t in tasks]
        if pending and self._fatal is None:
            _done, left = await asyncio.wait(pending, timeout=deadline)
            if left:
                log.warning(
                    "drain deadline passed; abandoning events",
                    extra={"fields": {"abandoned": len(left)}},
                )
                for task in left:
                    task.cancel()
        if self._consumer is not None:
            # After a fatal error too: what finished is answered, and must not be again.
            await self._commit()

    # -- one event -------------------------------------------------------------------------

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """One record's error boundary: whatever it carries ends as a verdict or a dead
        letter, once. Only a `ServiceFault` (the broker refused a send, inference failed)
        escapes, leaving the record unfinished and uncommitted."""
        try:
            answer = await self._answer(record)
        except ServiceFault:
            raise
        except ModeratorError as exc:
            attempts = int(getattr(exc, "attempts", 1))
            await self._dead_letter(record, exc.reason, str(exc), attempts)
        except Exception as exc:  # a bug, or an input nothing anticipated
            log.exception(
                "internal error; dead-lettering the event",
                extra={"fields": {"partition": record.partition, "offset": record.offset}},
            )
            await self._dead_letter(record, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        else:
            try:
                await self._after_verdict(answer)
            except ServiceFault:
                raise
            except Exception:  # the verdict is out: a dead letter would answer it twice
                log.exception("error after the verdict was published")
        self.tracker.finished(record.topic, record.partition, record.offset)
        self._finished_since_commit += 1
        if record.timestamp and record.timestamp > 0:
            self.metrics.end_to_end.observe(max(0.0, time.time() - record.timestamp / 1000))

    async def _answer(self, record: ConsumerRecord[bytes, bytes]) -> _Answered:
        """Everything up to the verdict's acknowledgement; raises what makes a dead letter."""
        assert self._publisher is not None
        assert self._reloader is not None
        started = time.monotonic()
        timings: dict[str, float] = {}
        event, image_sha, pixels, data, attempts = await self._prepare(record, timings)
        try:
            embedding, cached = await self._embed(image_sha, pixels, data, timings)
            if not np.isfinite(embedding).all():
                raise InvalidEmbedding("the model's embedding of this image holds NaN or Inf")
        except ModeratorError as exc:  # x-attempts: the fetch attempts this image took
            if not hasattr(exc, "attempts"):
                exc.attempts = attempts  # type: ignore[attr-defined]
            raise
        t = time.monotonic()
        policy = self._reloader.current
        outcome = policy.score(embedding[None, :], [event.surface])[0]
        timings["score"] = time.monotonic() - t
        timings["total"] = time.monotonic() - started
        runtime = self._runtimes[0]
        verdict = build_verdict(
            event, outcome, policy, runtime, image_sha=image_sha, timings=timings, cached=cached
        )
        t = time.monotonic()
        truncated = await self._publisher.verdict(
            event.id,
            verdict,
            verdict_headers(
                policy.version, runtime.sha256, (record.topic, record.partition, record.offset)
            ),
        )
        self.metrics.stage_seconds.labels("publish").observe(time.monotonic() - t)
        return _Answered(event, verdict, embedding, image_sha, truncated)

    async def _after_verdict(self, answer: _Answered) -> None:
        """Counting, and the embeddings topic: after the verdict, never instead of it."""
        assert self._publisher is not None
        if answer.truncated:
            self.metrics.verdicts_truncated.inc()
        self._count_verdict(answer.verdict, answer.event)
        if self.settings.kafka.embeddings_topic:
            event = answer.event
            await self._publisher.embedding(
                self.settings.kafka.embeddings_topic,
                event.id,
                {
                    "id": event.id,
                    "image_sha256": answer.image_sha,
                    "model_sha256": self._runtimes[0].sha256,
                    "embedding": [round(float(x), 6) for x in answer.embedding],
                },
            )

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        reason: Reason,
        detail: str,
        attempts: int = 1,
    ) -> None:
        assert self._publisher is not None
        failure = Failure(reason, detail, record.topic, record.partition, record.offset, attempts)
        try:
            await self._publisher.dead_letter(record.key, record.value, record.headers, failure)
        except ServiceFault:
            raise
        except Exception as exc:  # the record's own bytes would not go: send the failure alone
            log.exception("dead letter refused; sending it without the original record")
            note = f"original record dropped: it could not be sent ({type(exc).__name__}); "
            await self._publisher.bare_dead_letter(record.key, failure, note)
        self.metrics.dlq.labels(reason.value).inc()
        log.info(
            "dead-lettered",
            extra={
                "fields": {
                    "reason": reason.value,
                    "detail": detail[:200],
                    "partition": record.partition,
                    "offset": record.offset,
                }
            },
        )

    async def _acquire(self, event: ImageEvent, timings: dict[str, float]) -> tuple[bytes, int]:
        if event.image_bytes is not None:
            return event.image_bytes, 1
        assert self._fetcher is not None
        assert event.image_url is not None
        t = time.monotonic()
        # The download may bring max_image_bytes: that much must fit the budget first. Once
        # it is here, the event holds what it brought until it is answered.
        async with self.budget.reserve(self.settings.pipeline.max_image_bytes):
            fetched = await self._fetcher.fetch(event.image_url)
        task = asyncio.current_task()
        if task in self._held:  # an event `_accept` started: released when it is answered
            self.budget.charge(len(fetched.data))
            self._held[task] += len(fetched.data)
        timings["acquire"] = time.monotonic() - t
        self.metrics.stage_seconds.labels("acquire").observe(timings["acquire"])
        return fetched.data, fetched.attempts

    async def _prepare(
        self, record: ConsumerRecord[bytes, bytes], timings: dict[str, float]
    ) -> tuple[ImageEvent, str, Pixels | None, bytes | _GpuJpeg | None, int]:
        """Parse, acquire and hash one record: (event, image sha256, pixels or None, image
        bytes or None, fetch attempts). With GPU decoding on, a JPEG a decode process found
        fit for the GPU comes back undecoded, marked as such (`_GpuJpeg`).

        Without a cache every image is decoded anyway, so an inline record goes to a decode
        process once, for parsing, hashing and decoding: base64, JSON and sha256 of large
        records stay off the loop (its CPU per event halves). With a cache the loop parses and
        hashes itself, so a hit costs no worker trip and a miss no second parse (in a worker,
        measured on 2 cores: 28 % fewer verdicts/s when every image missed, 21 % fewer with
        repeats)."""
        assert self._spec is not None
        assert self._decode_pool is not None
        max_bytes = self.settings.pipeline.max_image_bytes
        for name, why in record.headers:  # stand-ins for records kafka_records did not read
            if name == kafka_records.TOO_LARGE:
                raise TooLarge((why or b"").decode("utf-8", "replace"))
            if name == kafka_records.UNREADABLE:
                raise EventError((why or b"").decode("utf-8", "replace"))
        size = len(record.value or b"")
        if size > max_bytes * 4 // 3 + _JSON_ENVELOPE_BYTES:
            raise TooLarge(
                f"record value is {size} bytes: over any event with a {max_bytes}-byte image"
            )
        if self._cache is None:
            t = time.monotonic()
            prepared = await self._decode_pool.run(
                partial(
                    prepare_record,
                    record.value,
                    list(record.headers),
                    max_bytes=max_bytes,
                    spec=self._spec,
                    keep_jpeg=bool(self._gpu_decoders),
                )
            )
            # Its own stage: waiting for a worker, parsing, hashing and decoding.
            timings["prepare"] = time.monotonic() - t
            self.metrics.stage_seconds.labels("prepare").observe(timings["prepare"])
            event = prepared.event
            if prepared.image_sha256 is not None:
                jpeg = None if prepared.jpeg is None else _GpuJpeg(prepared.jpeg)
                return event, prepared.image_sha256, prepared.pixels, jpeg, 1
        else:
            event = parse_event(record.value, record.headers, max_bytes=max_bytes)
        data, attempts = await self._acquire(event, timings)
        return event, hashlib.sha256(data).hexdigest(), None, data, attempts

    async def _embed(
        self,
        image_sha: str,
        pixels: Pixels | None,
        data: bytes | _GpuJpeg | None,
        timings: dict[str, float],
    ) -> tuple[np.ndarray, bool]:
        """The image's embedding: from the cache, or `pixels` (decoded from `data` in a decode
        process when not given) through a batch."""
        assert self._batcher is not None
        runtime = self._runtimes[0]
        assert self._spec is not None
        namespace = image_namespace(runtime.sha256, self._spec)
        if self._cache is not None:
            hit = (await self._cache.get_many(namespace, [image_sha]))[0]
            if hit is not None:  # the cache serves only finite unit vectors of `dim`
                return hit, True
        embedded = None
        if pixels is None:
            assert data is not None
            assert self._spec is not None
            if isinstance(data, _GpuJpeg):
                data = data.data
                gpu = True
            else:  # fetched, or parsed on the loop: not looked at yet
                gpu = bool(self._gpu_decoders) and gpu_eligible(data, self._spec)
            if gpu:
                try:
                    embedded = await self._batcher.embed_encoded(data)
                    self.metrics.decodes.labels("gpu").inc()
                except NotDecoded as exc:
                    self.metrics.decodes.labels("gpu_refused").inc()
                    log.debug("GPU did not decode", extra={"fields": {"why": str(exc)}})
            if embedded is None:
                t = time.monotonic()
                assert self._decode_pool is not None
                pixels = await self._decode_pool.run(decode_image, data, self._spec)
                timings["decode"] = time.monotonic() - t
                self.metrics.stage_seconds.labels("decode").observe(timings["decode"])
        if embedded is None:
            assert pixels is not None
            self.metrics.decodes.labels("cpu").inc()
            embedded = await self._batcher.embed(pixels)
        timings["queue"] = embedded.queued_s
        timings["inference"] = embedded.inference_s
        if self._cache is not None:
            await self._cache.set_many(
                namespace, {image_sha: embedded.embedding}, self.settings.redis.image_ttl_s
            )
        return embedded.embedding, False

    # -- metrics hooks ---------------------------------------------------------------------

    def _count_verdict(self, verdict: dict[str, Any], event: ImageEvent) -> None:
        surface = self._surface_label(event.surface)
        self.metrics.verdicts.labels(verdict["decision"], surface).inc()
        for match in verdict["matches"]:
            self.metrics.matches.labels(match["id"], match["action"], "enforce", surface).inc()
        for match in verdict["shadow"]:
            self.metrics.matches.labels(match["id"], match["action"], "shadow", surface).inc()

    def _surface_label(self, surface: str | None) -> str:
        """Metric label for a surface: the policy's surfaces, `none`, or `other` (bounded:
        producers choose surfaces, and each new label value is a new time series)."""
        if surface is None:
            return "none"
        assert self._reloader is not None
        policy = self._reloader.current
        if policy.knows_surface(surface):
            return surface.lower()
        self.metrics.unknown_surfaces.inc()
        return "other"

    def _cache_result(self, kind: str, result: str, count: int) -> None:
        self.metrics.cache.labels(kind, result).inc(count)
        self.metrics.cache_up.set(0 if result == "error" else 1)

    def _batch_stage_done(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage).observe(seconds)

    def _batch_done(self, size: int, queued_s: float, inference_s: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.stage_seconds.labels("queue").observe(queued_s)
        self.metrics.stage_seconds.labels("inference").observe(inference_s)

    def _policy_result(
        self, ok: bool, name: str | None, version: str | None, error: str | None
    ) -> None:
        self.metrics.reloads.labels("ok" if ok else "failed").inc()
        self.metrics.policy_reload_failing.set(0 if ok else 1)
        if ok and version:
            self.metrics.policy_info.info({"name": name or "", "version": version})


def run_service(config_file: Path | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point of `moderator serve`: settings, logging, then the event loop."""
    env = dict(os.environ if environ is None else environ)
    settings = load_settings(env, config_file)
    configure(settings.log.level, settings.log.json_format)
    for name in unknown_env_vars(env):
        log.warning("unknown setting ignored", extra={"fields": {"variable": name}})
    return asyncio.run(Service(settings).run())
