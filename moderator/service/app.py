"""`moderator serve`: one consumer-group member, from start to a clean stop.

Start-up, in order: the health server; the model on each device; the preprocessing spec; the
Redis cache (when configured); the policy, compiled; the decode processes; the URL fetcher;
GPU JPEG decoders (when asked); the batcher; topics (when asked) and their record limits; the
producer; then the consumer joins the group. Serving is the commit loop
(`moderator.kafka.commit`) running the route (`moderator.service.route`) once per record. On
SIGTERM/SIGINT, or a fatal error, the loop drains within `pipeline.drain_timeout_s`, commits
what finished, and everything is closed in reverse order. `run()` returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from moderator.cache.redis import RedisEmbeddingCache
from moderator.embed import ClipRuntime
from moderator.kafka import admin, records
from moderator.kafka.commit import CommitLoop
from moderator.kafka.consumer import GroupConsumer
from moderator.kafka.producer import Producer
from moderator.kafka.publish import Publisher
from moderator.log import configure, get
from moderator.pipeline.acquire.fetch import Fetcher, FetchPolicy
from moderator.pipeline.batch import Batcher, DeviceInfer
from moderator.pipeline.budget import MemoryBudget
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.pool import DecodePool
from moderator.policy.reload import PolicyReloader
from moderator.service import loop_lag
from moderator.service.embedder import Embedder
from moderator.service.http import HealthServer
from moderator.service.metrics import Metrics
from moderator.service.models import load_runtimes, open_gpu_decoders
from moderator.service.route import Route
from moderator.service.sensor import Sensor
from moderator.settings import Settings, load_settings, unknown_env_vars

log = get("service")


class Service:
    """Opens the stages, runs the commit loop, drains and closes. `run()` returns the exit code."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.sensor = Sensor(self.metrics)
        self.budget = MemoryBudget(settings.pipeline.memory_budget_bytes)
        self.http = HealthServer(self.metrics, self.readiness, self.liveness)
        self._stopping = asyncio.Event()
        # Set while starting, in this order; readiness reports what is still missing.
        self._runtimes: list[ClipRuntime] = []
        self._reloader: PolicyReloader | None = None
        self._loop: CommitLoop | None = None
        self.decode_pool: DecodePool | None = None  # its processes, for operators and fault tests

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
        if self._loop is None or not self._loop.joined:
            reasons.append("consumer has not joined the group")
        if self._stopping.is_set():
            reasons.append("draining")
        return not reasons, reasons

    def liveness(self) -> tuple[bool, str]:
        # The answer itself proves the event loop runs; a consume loop stuck for minutes does not.
        if self._loop is None:
            return True, "ok"
        idle = time.monotonic() - self._loop.last_poll
        limit = max(60.0, self.settings.kafka.session_timeout_ms / 1000)
        if idle > limit:
            return False, f"consumer loop has not polled for {idle:.0f} s"
        return True, "ok"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        s = self.settings
        fatal: BaseException | None = None
        async with contextlib.AsyncExitStack() as stack:
            await self.http.start(s.http.host, s.http.port)
            stack.push_async_callback(_quietly, self.http.stop)
            commit_loop = await self._open(stack)
            # From here: start-up (model loads, warm-ups) would only blur the serving figure.
            watching = asyncio.create_task(loop_lag.watch(self.sensor.on_loop_lag))
            try:
                await commit_loop.run()
            except Exception as exc:  # the consume loop itself failed: stop, but commit first
                commit_loop.fatal = exc
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            await commit_loop.drain(s.pipeline.drain_timeout_s)
            fatal = commit_loop.fatal
        if fatal is not None:
            log.error("stopped on a fatal error", exc_info=fatal)
            return 1
        log.info("stopped cleanly")
        return 0

    async def _open(self, stack: contextlib.AsyncExitStack) -> CommitLoop:
        """Start every stage, each closed by `stack` in reverse order; the loop last."""
        s = self.settings
        self._runtimes = await load_runtimes(s)
        primary = self._runtimes[0]
        self.sensor.on_model(primary.info())
        spec = PreprocessSpec(
            image_size=primary.image_size,
            resize_shortest_edge=primary.manifest.resize_shortest_edge,
            max_bytes=s.pipeline.max_image_bytes,
            max_pixels=s.pipeline.max_image_pixels,
            allowed_formats=frozenset(f.upper() for f in s.pipeline.allowed_formats),
        )
        cache = None
        if s.redis.enabled:
            cache = RedisEmbeddingCache(
                s.redis.url.get_secret_value(),
                timeout_s=s.redis.timeout_s,
                on_result=self.sensor.on_cache,
                dim=primary.embed_dim,
            )
            stack.push_async_callback(_quietly, cache.aclose)
            await cache.ping()
        reloader = PolicyReloader(
            s.policy.path,
            primary,
            cache=cache,
            interval_s=s.policy.reload_interval_s,
            text_ttl_s=s.redis.text_ttl_s,
            on_result=self.sensor.on_policy,
        )
        self._reloader = reloader
        stack.push_async_callback(_quietly, reloader.stop)
        await reloader.start()
        pool = await self._open_decode_pool(stack, spec)
        fetcher = Fetcher(FetchPolicy.from_settings(s.pipeline))
        stack.push_async_callback(_quietly, fetcher.aclose)
        decoders = await asyncio.to_thread(
            open_gpu_decoders, s.pipeline.gpu_decode, self._runtimes, spec, s.pipeline.max_batch
        )
        for decoder in decoders:
            stack.push_async_callback(_quietly, decoder.close)
        batcher = Batcher(
            [rt.encode_pixels for rt in self._runtimes],
            device_infers=[
                DeviceInfer(
                    decode=d.decode,
                    finish=partial(d.embed_decoded, encode=rt.encode_device_pixels),
                )
                for d, rt in zip(decoders, self._runtimes, strict=False)
            ]
            or None,
            max_batch=s.pipeline.max_batch,
            max_wait_s=s.pipeline.max_wait_ms / 1000,
            on_batch=self.sensor.on_batch,
            on_stage=self.sensor.on_stage,
            on_cpu=self.sensor.on_cpu,
        )
        batcher.start()
        stack.push_async_callback(_quietly, batcher.stop)
        publisher = await self._open_publisher(stack)
        route = Route(
            embedder=Embedder(
                spec=spec,
                model_sha256=primary.sha256,
                decode_pool=pool,
                fetcher=fetcher,
                batcher=batcher,
                budget=self.budget,
                sensor=self.sensor,
                cache=cache,
                image_ttl_s=s.redis.image_ttl_s,
                gpu_decode=bool(decoders),
            ),
            policies=reloader,
            model=primary,
            publisher=publisher,
            sensor=self.sensor,
            embeddings_topic=s.kafka.embeddings_topic,
        )
        await admin.wait_until_ready(s.kafka, [s.kafka.input_topic], group_id=s.kafka.group_id)
        consumer = GroupConsumer(
            s.kafka,
            s.kafka.input_topic,
            max_decompressed=min(
                records.DEFAULT_MAX_DECOMPRESSED, s.pipeline.memory_budget_bytes // 4
            ),
        )
        commit_loop = CommitLoop(
            consumer,
            route.handle,
            budget=self.budget,
            sensor=self.sensor,
            max_poll_records=s.kafka.max_poll_records,
            max_in_flight=s.pipeline.max_in_flight,
            stopping=self._stopping,
        )
        stack.push_async_callback(_quietly, consumer.stop)
        await consumer.start(commit_loop.assigned, commit_loop.revoked)
        self._loop = commit_loop
        log.info(
            "serving",
            extra={
                "fields": {
                    "input": s.kafka.input_topic,
                    "group": s.kafka.group_id,
                    "model": primary.model_id,
                    "provider": primary.provider,
                    "policy": reloader.current.version,
                }
            },
        )
        return commit_loop

    async def _open_decode_pool(
        self, stack: contextlib.AsyncExitStack, spec: PreprocessSpec
    ) -> DecodePool:
        workers = self.settings.pipeline.decode_workers or os.cpu_count() or 1
        started = time.monotonic()
        pool = DecodePool(
            workers, spec, on_replaced=self.sensor.on_pool_replaced, on_cpu=self.sensor.on_cpu
        )
        stack.push_async_callback(_quietly, pool.close)
        await pool.start()
        self.decode_pool = pool
        seconds = round(time.monotonic() - started, 2)
        fields = {"processes": workers, "seconds": seconds}
        log.info("decode processes started", extra={"fields": fields})
        return pool

    async def _open_publisher(self, stack: contextlib.AsyncExitStack) -> Publisher:
        """The producer, and every output topic's record limit: a record over it would wedge
        the producer."""
        k = self.settings.kafka
        topics = [k.input_topic, k.verdict_topic, k.dlq_topic]
        if k.embeddings_topic:
            topics.append(k.embeddings_topic)
        if k.create_topics:
            await admin.ensure_topics(k, topics)
        limits = await admin.max_message_bytes(k, topics[1:])
        producer = Producer(k)
        stack.push_async_callback(_quietly, producer.stop)
        await producer.start()
        return Publisher(producer, k.verdict_topic, k.dlq_topic, limits)


async def _quietly(close: Callable[[], Awaitable[object] | object]) -> None:
    """Closing goes on for the rest whatever one closer raises."""
    try:
        closed = close()
        if inspect.isawaitable(closed):
            await closed
    except Exception:
        log.exception("error while closing")


def run_service(config_file: Path | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point of `moderator serve`: settings, logging, then the event loop."""
    env = dict(os.environ if environ is None else environ)
    settings = load_settings(env, config_file)
    configure(settings.log.level, settings.log.json_format)
    for name in unknown_env_vars(env):
        log.warning("unknown setting ignored", extra={"fields": {"variable": name}})
    return asyncio.run(Service(settings).run())
