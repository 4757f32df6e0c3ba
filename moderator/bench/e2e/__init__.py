"""`moderator bench e2e`: events through a Kafka broker to verdicts, ours vs the naive peer.

Phases, each on fresh topics and a fresh consumer group:

1. **Max load, ours.** N events (inline base64 JSON; `--url-fraction` of them by URL from a
   local HTTP server) are produced before the service starts. `moderator serve` is started as
   a subprocess (its own GIL, as deployed; `--replicas` starts several in one group); the clock
   starts when `/readyz` says one has joined the group (model loading is not counted, but
   replicas still loading count against the rate) and stops when the N-th answer (verdict or
   DLQ record) is read back: verdicts/s = N / that time.
2. **Max load, naive.** The same N events (same topic, its own group), `naive.py` as a
   subprocess; the clock starts when it has partitions.
3. **Half load, ours** (and the peer's, `--peer-latency`): events are produced at 50% of the
   phase-1 rate for `--duration` seconds by `--producers` processes while the service runs;
   latency per event = the verdict record's Kafka timestamp − the input record's (both
   CreateTime: the load generator stamps each event as it sends it, the service's producer
   when it sends the verdict). The first 20% of the window (at most 2 s) is left out as
   warm-up. Preloaded events have no meaningful latency, which is why this is its own phase.

Redis is off for the service: the image pool repeats (`--unique` images), and a cache hit
would skip decode and inference that the peer has to do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from moderator.bench.images import BenchImage, bench_images
from moderator.bench.model import B32, resolve_bench_model
from moderator.bench.report import Column, Report
from moderator.embed.paths import DEMO_NAME
from moderator.errors import ConfigError
from moderator.kafka import close_reader, open_reader, wait_until_ready
from moderator.settings import KafkaSettings

__all__ = ["E2EOptions", "default_events", "percentile", "run_e2e_bench"]

_REPO_ROOT: Final = Path(__file__).resolve().parents[2]
# Events of up to ~1.8 MB (a 1.3 MB PNG in base64): over Kafka's 1 MB default record limit.
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024
SURFACE: Final = "upload"
# Defaults that finish in about a minute per phase on a 2-core CPU box.
DEFAULT_EVENTS: Final = {DEMO_NAME: 600, B32: 200}
DEFAULT_EVENTS_OTHER: Final = 200
_READY_TIMEOUT_S: Final = 300.0  # model load + policy compile + group join
_STOP_TIMEOUT_S: Final = 60.0
_POLL_S: Final = 0.05
_WARMUP_FRACTION: Final = 0.2
_WARMUP_MAX_S: Final = 2.0
_SEND_TICK_S: Final = 0.002  # rate-limited producers send what is due every tick

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class E2EOptions:
    model: str = DEMO_NAME
    events: int | None = None
    broker: str = "127.0.0.1:9092"
    peer: str | None = "naive"
    peer_model: Path | None = None
    peer_batch: int = 1
    peer_threads: int = 0
    peer_latency: bool = True
    duration: float = 20.0
    unique: int = 32
    png_fraction: float = 0.2
    url_fraction: float = 0.0
    partitions: int = 6
    producers: int = 1
    providers: Sequence[str] = ("cuda", "cpu")
    precision: str = "auto"
    policy: Path | None = None
    timeout: float = 600.0
    service_env: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    replica_devices: Sequence[int] = ()
    keep_topics: bool = False
    seed: int = 0


def default_events(model: str) -> int:
    return DEFAULT_EVENTS.get(model, DEFAULT_EVENTS_OTHER)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation); None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# --- events and the load generator -----------------------------------------------------------


@dataclass(frozen=True)
class _Pool:
    """Pre-encoded pieces of event JSON, so an event costs one concatenation to build."""

    inline: list[bytes]  # base64 of each image
    urls: list[bytes]  # its URL on the local image server ([] without one)
    url_fraction: float

    def event(self, index: int, event_id: str) -> bytes:
        k = index % len(self.inline)
        head = b'{"id":"' + event_id.encode() + b'","surface":"' + SURFACE.encode() + b'",'
        if self.urls and (index % 100) < round(self.url_fraction * 100):
            return head + b'"image_url":"' + self.urls[k] + b'"}'
        return head + b'"image_b64":"' + self.inline[k] + b'"}'


@dataclass(frozen=True)
class _ProduceJob:
    bootstrap: str
    topic: str
    pool: _Pool
    prefix: str
    count: int | None  # preload: exactly this many, as fast as possible
    rate: float | None  # else: this many per second …
    duration: float | None  # … for this long
    start_at: float  # wall-clock time all producers begin at


@dataclass(frozen=True)
class _Produced:
    ids: list[str]
    timestamps_ms: list[int]
    seconds: float


def _produce_worker(job: _ProduceJob) -> _Produced:
    return asyncio.run(_produce(job))


async def _produce(job: _ProduceJob) -> _Produced:
    producer = AIOKafkaProducer(
        bootstrap_servers=job.bootstrap,
        acks=1,  # the generator's own durability is not what is measured
        linger_ms=1,
        max_request_size=MAX_RECORD_BYTES,
        max_batch_size=1024 * 1024,
    )
    await producer.start()
    ids: list[str] = []
    stamps: list[int] = []
    futures: list[asyncio.Future[Any]] = []
    try:
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
        started = time.monotonic()

        async def send(i: int) -> None:
            event_id = f"{job.prefix}-{i}"
            now_ms = int(time.time() * 1000)
            futures.append(
                await producer.send(
                    job.topic,
                    job.pool.event(i, event_id),
                    key=event_id.encode(),
                    timestamp_ms=now_ms,
                )
            )
            ids.append(event_id)
            stamps.append(now_ms)

        if job.count is not None:
            for i in range(job.count):
                await send(i)
        else:
            assert job.rate is not None
            assert job.duration is not None
            i = 0
            while (elapsed := time.monotonic() - started) < job.duration:
                due = int(elapsed * job.rate)
                while i < due:
                    await send(i)
                    i += 1
                await asyncio.sleep(_SEND_TICK_S)
        await asyncio.gather(*futures)
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
    return _Produced(ids, stamps, seconds)


def _run_producers(
    bootstrap: str,
    topic: str,
    pool: _Pool,
    tag: str,
    *,
    workers: int,
    count: int | None = None,
    rate: float | None = None,
    duration: float | None = None,
) -> _Produced:
    """Split the work over `workers` processes (spawned: no inherited threads or loops)."""
    start_at = time.time() + 2.0 + 0.5 * workers  # every process imported and connected
    jobs = []
    for w in range(workers):
        share = None if count is None else count // workers + (1 if w < count % workers else 0)
        jobs.append(
            _ProduceJob(
                bootstrap,
                topic,
                pool,
                f"{tag}-{w}",
                share,
                None if rate is None else rate / workers,
                duration,
                start_at,
            )
        )
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        results = list(ex.map(_produce_worker, jobs))
    return _Produced(
        [i for r in results for i in r.ids],
        [t for r in results for t in r.timestamps_ms],
        max(r.seconds for r in results),
    )


# --- reading answers back --------------------------------------------------------------------


class _Collector:
    """Reads verdict (and DLQ) topics from the start; remembers each key's first answer."""

    def __init__(self, bootstrap: str, verdicts: str, dlq: str | None, parse: bool) -> None:
        self._bootstrap = bootstrap
        self._topics = [verdicts] + ([dlq] if dlq else [])
        self._verdicts = verdicts
        self._parse = parse
        self.answered: dict[str, int] = {}  # id → answer record timestamp (ms)
        self.arrived: dict[str, float] = {}  # id → monotonic time we read it
        self.dead = 0
        self.timings: list[dict[str, float]] = []
        self.timings_by_id: dict[str, dict[str, float]] = {}
        self.decisions: dict[str, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = await open_reader(
            KafkaSettings(bootstrap_servers=self._bootstrap),
            self._topics,
            max_partition_fetch_bytes=MAX_RECORD_BYTES,
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.monotonic()
            for tp, records in batches.items():
                for r in records:
                    key = (r.key or b"").decode()
                    if key in self.answered:
                        continue
                    self.answered[key] = r.timestamp
                    self.arrived[key] = now
                    if tp.topic != self._verdicts:
                        self.dead += 1
                    elif self._parse:
                        verdict = json.loads(r.value or b"{}")
                        decision = str(verdict.get("decision"))
                        self.decisions[decision] = self.decisions.get(decision, 0) + 1
                        if isinstance(verdict.get("timings_ms"), dict):
                            self.timings.append(verdict["timings_ms"])
                            self.timings_by_id[key] = verdict["timings_ms"]

    async def wait_for(self, count: int, deadline: float) -> bool:
        """True once `count` answers are in; False at the monotonic `deadline`."""
        while len(self.answered) < count:
            if time.monotonic() >= deadline:
                return False
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise what stopped the reader
            await asyncio.sleep(_POLL_S)
        return True

    async def stop(self) -> None:
        await close_reader(self._task, self._consumer)


# --- the systems under test ------------------------------------------------------------------


@dataclass
class _System:
    """Running consumer processes (ours: one per replica; the peer: one) and how to tell they
    are all ready."""

    name: str
    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]
    ready: Callable[[], list[bool]]  # one flag per process
    metrics_urls: list[str] = field(default_factory=list)

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise ConfigError(
                    f"{self.name} exited with {process.returncode} before finishing:\n" + _tail(log)
                )

    async def wait_ready(self) -> tuple[float, float]:
        """Monotonic times at which the first and the last process became ready."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        first: float | None = None
        while True:
            flags = await asyncio.to_thread(self.ready)
            now = time.monotonic()
            if any(flags) and first is None:
                first = now
            if all(flags):
                return first or now, now
            self.check_alive()
            if now > deadline:
                raise ConfigError(f"{self.name} not ready after {_READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(_POLL_S)

    def loop_cpu_s(self) -> float | None:
        """CPU seconds the processes' main threads (the service's event loops) have used, or
        None where /proc cannot tell (not Linux)."""
        total = 0.0
        for process in self.processes:
            used = _main_thread_cpu_s(process.pid)
            if used is None:
                return None
            total += used
        return total

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, _STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


def _main_thread_cpu_s(pid: int) -> float | None:
    """utime + stime of a process's main thread, from /proc/PID/task/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


_handed_out: set[int] = set()  # ports `_free_port` gave this process, never given twice


def _free_port() -> int:
    """A port free now, below Linux's ephemeral range: a port the kernel hands out may be
    taken by some client's connection (Kafka's, with many replicas) between this check and
    the service's bind, as happened once on a 32-core host. Elsewhere (no /proc), the
    kernel picks."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    below = [p for p in range(min(20000, max(low - 1000, 1024)), low) if p not in _handed_out]
    for port in random.sample(below, k=min(200, len(below))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # nothing free below the range: let the kernel pick
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        _handed_out.add(chosen)
        return chosen


def _clean_env() -> dict[str, str]:
    """This environment without MODERATOR_* settings: the bench sets every one it means."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}


def _service_env(
    opts: E2EOptions,
    replica: int,
    onnx_dir: Path,
    policy: Path,
    topics: dict[str, str],
    group: str,
    port: int,
) -> dict[str, str]:
    """The environment of service replica `replica`: every setting the bench means, the
    host's cores shared out between replicas, GPUs dealt out in turn, then `--service-env`."""
    env = _clean_env() | {
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": opts.broker,
        "MODERATOR_KAFKA__GROUP_ID": group,
        "MODERATOR_KAFKA__INPUT_TOPIC": topics["input"],
        "MODERATOR_KAFKA__VERDICT_TOPIC": topics["verdicts"],
        "MODERATOR_KAFKA__DLQ_TOPIC": topics["dlq"],
        "MODERATOR_KAFKA__CREATE_TOPICS": "false",
        "MODERATOR_REDIS__ENABLED": "false",
        "MODERATOR_MODEL__PATH": str(onnx_dir),
        "MODERATOR_MODEL__PROVIDERS": json.dumps(list(opts.providers)),
        "MODERATOR_MODEL__VERIFY_HASHES": "false",
        "MODERATOR_POLICY__PATH": str(policy),
        "MODERATOR_PIPELINE__FETCH_ALLOW_PRIVATE": "true",  # the local image server
        "MODERATOR_HTTP__HOST": "127.0.0.1",
        "MODERATOR_HTTP__PORT": str(port),
        "MODERATOR_LOG__LEVEL": "WARNING",
    }
    if opts.replicas > 1:
        cores = os.cpu_count() or 1
        env["MODERATOR_PIPELINE__DECODE_WORKERS"] = str(max(1, cores // opts.replicas))
    if opts.replica_devices:
        device = opts.replica_devices[replica % len(opts.replica_devices)]
        env["MODERATOR_MODEL__DEVICE_IDS"] = json.dumps([device])
    env |= opts.service_env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _start_ours(
    opts: E2EOptions, onnx_dir: Path, policy: Path, topics: dict[str, str], group: str, log: Path
) -> _System:
    """`opts.replicas` service processes in one consumer group, as replicas on one host."""
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    bases: list[str] = []
    for replica in range(opts.replicas):
        port = _free_port()
        env = _service_env(opts, replica, onnx_dir, policy, topics, group, port)
        path = log if opts.replicas == 1 else log.with_name(f"{log.stem}-{replica}{log.suffix}")
        with path.open("ab") as sink:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "moderator", "serve"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=sink,
                )
            )
        logs.append(path)
        bases.append(f"http://127.0.0.1:{port}")

    def ready() -> list[bool]:
        return [_ready(f"{b}/readyz") for b in bases]

    name = "moderator serve" if opts.replicas == 1 else f"moderator serve ×{opts.replicas}"
    return _System(name, processes, logs, ready, [f"{b}/metrics" for b in bases])


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _start_naive(
    opts: E2EOptions, checkpoint: Path, policy: Path, topics: dict[str, str], group: str, log: Path
) -> _System:
    ready_file = log.with_suffix(".ready")
    ready_file.unlink(missing_ok=True)
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    args = [
        *("--bootstrap", opts.broker, "--input", topics["input"]),
        *("--verdicts", topics["verdicts"], "--group", group),
        *("--checkpoint", str(checkpoint), "--policy", str(policy)),
        *("--batch", str(opts.peer_batch), "--threads", str(opts.peer_threads)),
        *("--ready-file", str(ready_file)),
    ]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moderator.bench.naive", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    return _System("naive peer", [process], [log], lambda: [ready_file.is_file()])


# --- phases ----------------------------------------------------------------------------------


@dataclass
class _Phase:
    system: str
    load: str
    events: int
    answered: int
    seconds: float
    complete: bool
    dead: int = 0
    offered_rate: float | None = None
    input_rate: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    first_answer_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "system": self.system,
            "load": self.load,
            "events": self.events,
            "answered": self.answered,
            "dlq": self.dead,
            "seconds": round(self.seconds, 3),
            "verdicts_s": self.rate,
            "offered_s": self.offered_rate,
            "input_s": self.input_rate,
            "p50_ms": percentile(lat, 50),
            "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None,
            "latency_samples": len(lat),
            "first_answer_s": self.first_answer_s,
            "complete": self.complete,
            **self.extra,
        }


async def _max_phase(
    name: str,
    start: Callable[[], _System],
    collector: _Collector,
    events: int,
    limit_s: float,
    progress: Progress,
) -> tuple[_Phase, _System]:
    """Start the system on the preloaded topic, time it from ready to the N-th answer."""
    await collector.start()
    system = start()
    try:
        # The clock starts when the first replica is ready: the others still loading count
        # against the rate, never work done before the clock (a conservative figure).
        t0, all_ready = await system.wait_ready()
        loop_cpu_0 = system.loop_cpu_s()
        progress(f"{name}: ready; consuming {events} preloaded events")
        deadline = t0 + limit_s
        complete = False
        while time.monotonic() < deadline:
            system.check_alive()
            if await collector.wait_for(events, min(deadline, time.monotonic() + 1.0)):
                complete = True
                break
        t1 = max(collector.arrived.values(), default=time.monotonic()) if complete else None
        elapsed = (t1 or time.monotonic()) - t0
        first = min(collector.arrived.values(), default=None)
        phase = _Phase(
            name,
            "max",
            events,
            min(len(collector.answered), events),
            elapsed,
            complete,
            dead=collector.dead,
            first_answer_s=None if first is None else first - t0,
        )
        if len(system.processes) > 1:
            phase.extra["all_ready_after_s"] = round(all_ready - t0, 3)
            phase.extra["verdicts_s_all_ready"] = _rate_since(collector.arrived, all_ready, t1)
        loop_cpu_1 = system.loop_cpu_s()
        # One process only: with replicas, the later ones' model loading would land in it.
        single = len(system.processes) == 1
        if name == "ours" and single and loop_cpu_0 is not None and loop_cpu_1 is not None:
            # Main-thread CPU per answer: what one event costs the event loop, the part of
            # the work no extra decode worker or GPU can take over.
            used_ms = 1000 * (loop_cpu_1 - loop_cpu_0)
            phase.extra["loop_cpu_ms_per_event"] = used_ms / max(1, phase.answered)
    except BaseException:
        await system.stop()
        raise
    return phase, system


def _rate_since(arrived: dict[str, float], since: float, until: float | None) -> float | None:
    """Answers per second from `since` (the last replica ready) to `until` (the N-th answer).

    Why: replicas that finish loading after the clock starts make the group rebalance, and
    consumption pauses while it does; this figure leaves that start-up out. None when the run
    did not complete or less than a second of it came after `since`.
    """
    if until is None or until - since < 1.0:
        return None
    return sum(1 for t in arrived.values() if since < t <= until) / (until - since)


async def _half_phase(
    name: str,
    start: Callable[[], _System],
    collector: _Collector,
    opts: E2EOptions,
    pool: _Pool,
    topic: str,
    rate: float,
    progress: Progress,
) -> _Phase:
    await collector.start()
    system = start()
    try:
        await system.wait_ready()
        progress(f"{name}: producing {rate:.1f} events/s for {opts.duration:.0f} s")
        produced = await asyncio.to_thread(
            _run_producers,
            opts.broker,
            topic,
            pool,
            f"half-{uuid.uuid4().hex[:6]}",
            workers=opts.producers,
            rate=rate,
            duration=opts.duration,
        )
        deadline = time.monotonic() + max(60.0, opts.duration)
        complete = await collector.wait_for(len(produced.ids), deadline)
        system.check_alive()
        metrics = await _scrape(system.metrics_urls)
    finally:
        await system.stop()
    sent = dict(zip(produced.ids, produced.timestamps_ms, strict=True))
    begin = min(produced.timestamps_ms, default=0)
    skip_ms = 1000 * min(_WARMUP_MAX_S, _WARMUP_FRACTION * opts.duration)
    latency_by_id = {
        i: float(collector.answered[i] - ts)
        for i, ts in sent.items()
        if i in collector.answered and ts >= begin + skip_ms
    }
    latencies = list(latency_by_id.values())
    return _Phase(
        name,
        "half",
        len(produced.ids),
        sum(1 for i in sent if i in collector.answered),
        produced.seconds,
        complete,
        dead=collector.dead,
        offered_rate=rate,
        input_rate=len(produced.ids) / produced.seconds if produced.seconds else None,
        latencies_ms=latencies,
        extra=_slow_event_stages(latency_by_id, collector.timings_by_id)
        | _batch_stages(metrics)
        | _loop_lag(metrics)
        | _latency_by_second(sent, collector.answered),
    )


def _latency_by_second(sent: dict[str, int], answered: dict[str, int]) -> dict[str, Any]:
    """Per second of sending, from the phase's first event, warm-up included: how many events
    were answered, their median and their largest latency (ms).
    Why: a tail spread over the whole run (a slow stage) and one from a few stalls (the events
    of one or two seconds all late) give the same p99; the seconds tell them apart."""
    if not sent:
        return {}
    begin = min(sent.values())
    seconds: dict[int, list[float]] = defaultdict(list)
    for event_id, ts in sent.items():
        if event_id in answered:
            seconds[(ts - begin) // 1000].append(float(answered[event_id] - ts))
    rows = [
        {
            "second": second,
            "answered": len(values),
            "p50_ms": round(float(np.median(values)), 1),
            "max_ms": round(max(values), 1),
        }
        for second, values in sorted(seconds.items())
    ]
    return {"latency_by_second": rows} if rows else {}


def _slow_event_stages(
    latency_by_id: dict[str, float], timings_by_id: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Where the slowest tenth of events spent their time, against all events: the median of
    each verdict `timings_ms` stage, plus `outside`, the latency the service's own `total`
    does not cover: from the bench producer's send to the service handling the event (the
    broker, the consumer's fetch, waiting for a slot), and building the verdict up to the
    service producer's send (the verdict's timestamp), not the broker's write of it.
    Why: a half-load p99 says that some events are slow, not which stage holds them."""
    timed = [(ms, timings_by_id[i]) for i, ms in latency_by_id.items() if i in timings_by_id]
    if not timed:
        return {}
    with_outside = [(ms, t | {"outside": ms - t.get("total", 0.0)}) for ms, t in timed]
    # By rank, not by a percentile cut: latencies are whole milliseconds, so ties at a cut
    # could take in a fifth of the events.
    ranked = sorted(with_outside, key=lambda pair: pair[0])
    slowest = ranked[-max(1, -(-len(ranked) // 10)) :]
    return {
        "stage_p50_ms": _stage_medians([t for _, t in with_outside]),
        "slowest_tenth_stage_p50_ms": _stage_medians([t for _, t in slowest]),
    }


_BATCH_STAGES: Final = ("queue", "inference", "gpu_decode", "gpu_wait", "gpu_finish")


def _histograms(
    metrics_texts: Sequence[str], metric: str, label: str | None = None
) -> dict[str, dict[str, float | None]]:
    """One histogram summed over the replicas' Prometheus texts, per value of `label` (all
    under "" without one): `count`, `mean_ms`, and `p99_le_ms` / `max_le_ms`, the upper
    bounds of the buckets holding the 99th percentile and the largest sample (None past the
    last bound)."""
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    sample = re.compile(rf"^{re.escape(metric)}_(bucket|sum)(?:\{{([^}}]*)\}})? (\S+)$", re.M)
    for text in metrics_texts:
        for kind, labels, value in sample.findall(text):
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = found.get(label, "") if label else ""
            if kind == "sum":
                sums[key] = sums.get(key, 0.0) + float(value)
            else:
                le = float(found["le"])  # "+Inf" parses as inf
                counts = buckets.setdefault(key, {})
                counts[le] = counts.get(le, 0.0) + float(value)
    out: dict[str, dict[str, float | None]] = {}
    for key, counts in buckets.items():
        total = counts.get(math.inf, 0.0)
        if not total:
            continue
        bounds = sorted(counts)
        p99 = next(le for le in bounds if counts[le] >= 0.99 * total)
        top = next(le for le in bounds if counts[le] >= total)
        out[key] = {
            "count": total,
            "mean_ms": round(1000 * sums.get(key, 0.0) / total, 2),
            "p99_le_ms": None if math.isinf(p99) else round(1000 * p99, 1),
            "max_le_ms": None if math.isinf(top) else round(1000 * top, 1),
        }
    return out


def _batch_stages(metrics_texts: Sequence[str]) -> dict[str, Any]:
    """Per batch, over all replicas: how many, the mean, and the p99 and largest as bucket
    bounds, for the stages the batcher times (`moderator_stage_duration_seconds`), over the
    whole phase: unlike the latencies, the warm-up window is in. `gpu_wait` counts the
    batches that did not wait too, as 0.
    Why: a queue's tail comes from some batches being slow, which per-event medians hide."""
    stages = _histograms(metrics_texts, "moderator_stage_duration_seconds", "stage")
    out = {
        stage: {"batches": v.pop("count")} | v
        for stage, v in stages.items()
        if stage in _BATCH_STAGES
    }
    return {"batch_stage_ms": out} if out else {}


def _loop_lag(metrics_texts: Sequence[str]) -> dict[str, Any]:
    """How late the replicas' event loops woke, over the whole phase
    (`moderator_event_loop_lag_seconds`, ten samples a second per replica).
    Why: a loop that runs late holds up every event at once, in no stage of its own."""
    lag = _histograms(metrics_texts, "moderator_event_loop_lag_seconds").get("")
    if lag is None:
        return {}
    return {"loop_lag_ms": {"samples": lag.pop("count")} | lag}


def _bound(le_ms: float | None) -> str:
    """A histogram bucket's upper bound as the note lines print it."""
    return f"<= {le_ms:g} ms" if le_ms is not None else "> 30 s"


def _stage_medians(timings: list[dict[str, float]]) -> dict[str, float]:
    """Median of each `timings_ms` stage over the verdicts (where the time goes, in ours)."""
    stages = sorted({k for t in timings for k in t})
    return {s: round(float(np.median([t[s] for t in timings if s in t])), 2) for s in stages}


def _batch_mean(metrics_texts: Sequence[str]) -> float | None:
    """Mean inference batch size over the replicas' Prometheus texts."""
    total = count = 0.0
    for text in metrics_texts:
        found_sum = re.search(r"^moderator_batch_size_sum ([0-9.e+-]+)$", text, re.M)
        found_count = re.search(r"^moderator_batch_size_count ([0-9.e+-]+)$", text, re.M)
        if found_sum and found_count:
            total += float(found_sum.group(1))
            count += float(found_count.group(1))
    return total / count if count else None


async def _scrape(urls: Sequence[str]) -> list[str]:
    texts = []
    async with httpx.AsyncClient(timeout=5.0) as client:
        for url in urls:
            try:
                texts.append((await client.get(url)).text)
            except httpx.HTTPError:
                texts.append("")
    return texts


# --- topics and the image server -------------------------------------------------------------


class _Topics:
    """Fresh topics for one run, deleted at the end (unless kept)."""

    def __init__(self, broker: str, partitions: int) -> None:
        self._broker = broker
        self._partitions = partitions
        self._run = uuid.uuid4().hex[:8]
        self.created: list[str] = []

    async def make(self, label: str, *, big: bool) -> str:
        name = f"moderator-bench-{self._run}-{label}"
        config = {"max.message.bytes": str(MAX_RECORD_BYTES)} if big else {}
        admin = AIOKafkaAdminClient(bootstrap_servers=self._broker)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, self._partitions, 1, topic_configs=config)])
        finally:
            await admin.close()
        await wait_until_ready(KafkaSettings(bootstrap_servers=self._broker), [name])
        self.created.append(name)
        return name

    async def group(self, label: str) -> dict[str, str]:
        return {
            "input": await self.make(f"{label}-in", big=True),
            "verdicts": await self.make(f"{label}-verdicts", big=False),
            "dlq": await self.make(f"{label}-dlq", big=True),
        }

    async def delete(self) -> None:
        if not self.created:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self._broker)
        await admin.start()
        try:
            await admin.delete_topics(self.created)
        finally:
            await admin.close()


class _ImageServer:
    """`python -m http.server` over a temp folder of the pool's images, in its own process."""

    def __init__(self, images: list[BenchImage], folder: Path) -> None:
        self.port = _free_port()
        self.names = []
        for i, image in enumerate(images):
            name = f"{i}.{'jpg' if image.format == 'JPEG' else 'png'}"
            (folder / name).write_bytes(image.data)
            self.names.append(name)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise ConfigError("the local image server did not start")

    def urls(self) -> list[bytes]:
        return [f"http://127.0.0.1:{self.port}/{n}".encode() for n in self.names]

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


# --- the bench -------------------------------------------------------------------------------

COLUMNS: Final = [
    Column("system", "system"),
    Column("load", "load"),
    Column("answered", "events"),
    Column("seconds", "seconds"),
    Column("verdicts_s", "verdicts/s"),
    Column("offered_s", "offered/s"),
    Column("p50_ms", "p50 ms"),
    Column("p99_ms", "p99 ms"),
    Column("max_ms", "max ms"),
    Column("dlq", "dlq"),
    Column("complete", "complete"),
]


def _default_policy(model: str) -> Path:
    name = "demo.yaml" if model == DEMO_NAME else "default.yaml"
    for base in (Path.cwd(), _REPO_ROOT):
        if (base / "policies" / name).is_file():
            return base / "policies" / name
    raise ConfigError(f"policies/{name} not found here; pass --policy")


async def run_e2e_bench(opts: E2EOptions, progress: Progress = _stderr) -> Report:
    """Run the phases (see the module doc) and report; `ratio` = ours ÷ naive at max load."""
    events = opts.events or default_events(opts.model)
    if events < 1 or opts.unique < 1 or opts.duration <= 0:
        raise ConfigError("--events and --unique must be >= 1 and --duration > 0")
    precision = opts.precision
    if precision == "auto":
        from moderator.bench.model import auto_precision

        precision = auto_precision(opts.providers)
    bench_model = resolve_bench_model(
        opts.model,
        precision=precision,
        peer_model=opts.peer_model,
        progress=progress,
        peer=opts.peer is not None,
    )
    policy = opts.policy or _default_policy(opts.model)
    report = Report("e2e", COLUMNS)
    report.config = {
        "model": opts.model,
        "onnx_dir": str(bench_model.onnx_dir),
        "peer_checkpoint": str(bench_model.hf_dir) if bench_model.hf_dir else None,
        "policy": str(policy),
        "events": events,
        "unique_images": opts.unique,
        "png_fraction": opts.png_fraction,
        "url_fraction": opts.url_fraction,
        "partitions": opts.partitions,
        "producers": opts.producers,
        "half_load_seconds": opts.duration,
        "peer": opts.peer,
        "peer_batch": opts.peer_batch,
        "peer_threads": opts.peer_threads or None,
        "broker": opts.broker,
        "redis": False,
        "service_env": opts.service_env,
        "replicas": opts.replicas,
        "replica_devices": list(opts.replica_devices) or None,
        "precision": precision,
    }
    peer_dir = bench_model.hf_dir if opts.peer else None
    if opts.peer and peer_dir is None:
        why = f"; {bench_model.note}" if bench_model.note else ""
        report.notes.append(
            f"naive peer skipped: no PyTorch checkpoint for {opts.model!r} "
            f"(pass --peer-model DIR){why}"
        )
    progress(f"generating {opts.unique} photo-like 1024x768 images")
    images = bench_images(opts.unique, seed=opts.seed, png_fraction=opts.png_fraction)
    report.config["image_bytes_mean"] = int(np.mean([len(i.data) for i in images]))
    inline = [base64.b64encode(i.data) for i in images]
    topics = _Topics(opts.broker, opts.partitions)
    phases: list[_Phase] = []
    with tempfile.TemporaryDirectory(prefix="moderator-bench-") as tmp:
        folder = Path(tmp)
        server = None
        if opts.url_fraction > 0:
            (folder / "images").mkdir()
            server = _ImageServer(images, folder / "images")
        pool = _Pool(inline, server.urls() if server else [], opts.url_fraction)
        try:
            phases = await _phases(
                opts,
                events,
                bench_model.onnx_dir,
                peer_dir,
                policy,
                pool,
                topics,
                folder,
                report,
                progress,
            )
        finally:
            if server is not None:
                server.stop()
            if not opts.keep_topics:
                with contextlib.suppress(Exception):
                    await topics.delete()
    report.rows = [p.row() for p in phases]
    by = {(p.system, p.load): p for p in phases}
    ours, naive = by.get(("ours", "max")), by.get(("naive", "max"))
    ours_half, naive_half = by.get(("ours", "half")), by.get(("naive", "half"))
    report.results = {
        "ratio": ours.rate / naive.rate if ours and naive and naive.rate else None,
        "peer": "naive" if naive else None,
        "ours_verdicts_s": ours.rate if ours else None,
        "naive_verdicts_s": naive.rate if naive else None,
        "ours_half_load_p50_ms": percentile(ours_half.latencies_ms, 50) if ours_half else None,
        "ours_half_load_p99_ms": percentile(ours_half.latencies_ms, 99) if ours_half else None,
        "naive_half_load_p50_ms": percentile(naive_half.latencies_ms, 50) if naive_half else None,
        "naive_half_load_p99_ms": percentile(naive_half.latencies_ms, 99) if naive_half else None,
    }
    if any(not p.complete for p in phases):
        report.notes.append("some phase did not get every answer before its deadline")
    report.notes.append(
        "max load: N preloaded events, clock from ready (group joined) to the N-th answer; "
        "half load: latency = verdict record timestamp - input record timestamp"
    )
    if ours_half and ours_half.extra.get("slowest_tenth_stage_p50_ms"):
        stages = ours_half.extra["slowest_tenth_stage_p50_ms"]
        report.notes.append(
            "ours at half load, the slowest tenth of events, median ms per stage ('outside' ="
            " latency not covered by the service's total): "
            + ", ".join(f"{name} {ms:g}" for name, ms in stages.items())
        )
    if ours_half and ours_half.extra.get("batch_stage_ms"):
        report.notes.append(
            "ours at half load, per batch, all replicas, the whole phase with its warm-up (p99"
            " and largest as the bounds of their histogram buckets): "
            + ", ".join(
                f"{name} n={int(v['batches'])} mean {v['mean_ms']:g} ms"
                f" p99 {_bound(v['p99_le_ms'])} largest {_bound(v['max_le_ms'])}"
                for name, v in ours_half.extra["batch_stage_ms"].items()
            )
        )
    if ours_half and ours_half.extra.get("latency_by_second"):
        report.notes.append(
            "ours at half load, largest latency (ms) per second of sending, warm-up included: "
            + " ".join(f"{row['max_ms']:.0f}" for row in ours_half.extra["latency_by_second"])
        )
    if ours_half and ours_half.extra.get("loop_lag_ms"):
        lag = ours_half.extra["loop_lag_ms"]
        report.notes.append(
            f"ours at half load, event loop lag, all replicas ({int(lag['samples'])} samples):"
            f" mean {lag['mean_ms']:g} ms, p99 {_bound(lag['p99_le_ms'])},"
            f" largest {_bound(lag['max_le_ms'])}"
        )
    if opts.replicas > 1:
        report.notes.append(
            "replicas: the clock starts when the first is ready; verdicts_s_all_ready counts "
            "only the answers after the last one was ready (start-up rebalances left out)"
        )
    report.finish()
    return report


async def _phases(
    opts: E2EOptions,
    events: int,
    onnx_dir: Path,
    peer_dir: Path | None,
    policy: Path,
    pool: _Pool,
    topics: _Topics,
    folder: Path,
    report: Report,
    progress: Progress,
) -> list[_Phase]:
    phases: list[_Phase] = []
    shared = await topics.group("max")
    progress(f"preloading {events} events into {shared['input']}")
    preload = await asyncio.to_thread(
        _run_producers,
        opts.broker,
        shared["input"],
        pool,
        "max",
        workers=opts.producers,
        count=events,
    )
    report.config["preload_seconds"] = round(preload.seconds, 2)

    # 1. ours at max load
    collector = _Collector(opts.broker, shared["verdicts"], shared["dlq"], parse=True)
    try:
        phase, system = await _max_phase(
            "ours",
            lambda: _start_ours(
                opts,
                onnx_dir,
                policy,
                shared,
                f"bench-ours-{uuid.uuid4().hex[:6]}",
                folder / "ours-max.log",
            ),
            collector,
            events,
            opts.timeout,
            progress,
        )
        metrics = await _scrape(system.metrics_urls)
        await system.stop()
    finally:
        await collector.stop()
    phase.extra |= {
        "mean_batch": _batch_mean(metrics),
        "stage_p50_ms": _stage_medians(collector.timings),
        "decisions": collector.decisions,
    }
    phases.append(phase)
    progress(f"ours: {phase.rate:.1f} verdicts/s")

    # 2. the naive peer at max load, same events
    if peer_dir is not None:
        naive_topics = shared | {"verdicts": await topics.make("naive-verdicts", big=False)}
        collector = _Collector(opts.broker, naive_topics["verdicts"], None, parse=True)
        try:
            phase, system = await _max_phase(
                "naive",
                lambda: _start_naive(
                    opts,
                    peer_dir,
                    policy,
                    naive_topics,
                    f"bench-naive-{uuid.uuid4().hex[:6]}",
                    folder / "naive-max.log",
                ),
                collector,
                events,
                opts.timeout,
                progress,
            )
            await system.stop()
        finally:
            await collector.stop()
        phase.extra |= {"decisions": collector.decisions}
        phases.append(phase)
        progress(f"naive: {phase.rate:.1f} verdicts/s")

    # 3. half load: latency
    for p in list(phases):
        if p.load != "max" or (p.system == "naive" and not opts.peer_latency):
            continue
        half = await topics.group(f"half-{p.system}")
        # Ours' verdicts are parsed for their stage timings (`_slow_event_stages`).
        collector = _Collector(opts.broker, half["verdicts"], half["dlq"], parse=p.system == "ours")
        group = f"bench-{p.system}-half-{uuid.uuid4().hex[:6]}"
        log = folder / f"{p.system}-half.log"
        if p.system == "ours":

            def start(h: dict[str, str] = half, g: str = group, lg: Path = log) -> _System:
                return _start_ours(opts, onnx_dir, policy, h, g, lg)
        else:
            assert peer_dir is not None

            def start(h: dict[str, str] = half, g: str = group, lg: Path = log) -> _System:
                return _start_naive(opts, peer_dir, policy, h, g, lg)

        try:
            phases.append(
                await _half_phase(
                    p.system, start, collector, opts, pool, half["input"], p.rate / 2, progress
                )
            )
        finally:
            await collector.stop()
    return phases
