"""Where the host's CPU and the GPU go during a phase: the service (its replicas' event loops,
their other threads, their decode processes), the broker and the load generator, read from
/proc; the service's own per-stage CPU from its `moderator_cpu_seconds_total`; GPU busy % from
NVML where a GPU is used.

Why: with the broker and the load generator on the same host, a verdicts/s figure does not say
what one event costs the service itself, nor in which stage.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from moderator.cpu import STAGES
from moderator.harness.fleet import cpu_s, descendants


def listening_pids(port: int) -> list[int]:
    """The processes with a TCP socket listening on `port` (the broker), from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    found = []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        if any(_link(fd) in wanted for fd in fds):
            found.append(int(proc.name))
    return sorted(found)


def _link(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:  # closed since the listing
        return None


def broker_pids(bootstrap: str) -> list[int]:
    """The local broker's processes: whatever listens on the bootstrap's port, if local."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]") or not port.isdigit():
        return []
    return listening_pids(int(port))


def pin(pids: Iterable[int], cores: set[int]) -> None:
    """Pin every thread of each process (and of its descendants) to `cores`."""
    for pid in pids:
        for proc in [pid, *descendants(pid)]:
            for task in Path(f"/proc/{proc}/task").glob("*"):
                try:
                    os.sched_setaffinity(int(task.name), cores)
                except OSError:
                    continue


def parse_cores(spec: str) -> set[int]:
    """`0-3,8` → {0, 1, 2, 3, 8}."""
    cores: set[int] = set()
    for part in spec.split(","):
        if not part.strip():
            continue
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


@dataclass(frozen=True)
class Snapshot:
    """Cumulative CPU seconds per group at one moment, and when it was taken."""

    at: float
    service_loop: float
    service_threads: float
    service_workers: float
    broker: float
    load: float


class CpuMeter:
    """Takes snapshots of the CPU used by a fleet's processes, the broker and this process
    with the children it waited for (the collector and the load generator's processes)."""

    def __init__(self, replica_pids: Callable[[], Sequence[int]], broker: Sequence[int]) -> None:
        self._replicas = replica_pids
        self._broker = list(broker)

    def snapshot(self) -> Snapshot:
        loop = threads = workers = 0.0
        for pid in self._replicas():
            main = cpu_s(pid, pid)
            loop += main
            threads += cpu_s(pid) - main
            workers += sum(cpu_s(child) for child in descendants(pid))
        broker = sum(cpu_s(pid) for pid in self._broker)
        own = os.times()
        load = own.user + own.system + own.children_user + own.children_system
        return Snapshot(time.monotonic(), loop, threads, workers, broker, load)


def cpu_report(before: Snapshot, after: Snapshot, events: int) -> dict[str, Any]:
    """CPU ms per event by group between two snapshots, `events` answered in between."""
    n = max(1, events)

    def per_event(name: str) -> float:
        spent = float(getattr(after, name)) - float(getattr(before, name))
        return round(1000 * spent / n, 3)

    loop, threads, workers = (
        per_event(g) for g in ("service_loop", "service_threads", "service_workers")
    )
    return {
        "events": events,
        "seconds": round(after.at - before.at, 3),
        "service_ms": round(loop + threads + workers, 3),
        "service_loop_ms": loop,
        "service_threads_ms": threads,
        "service_decode_processes_ms": workers,
        "broker_ms": per_event("broker"),
        "load_ms": per_event("load"),
    }


_CPU_SAMPLE = re.compile(
    r'^moderator_cpu_seconds_total\{stage="([a-z0-9_]+)",where="([a-z]+)"\} (\S+)$', re.M
)
# Where a replica spends CPU (the metric's `where`), and the group of `cpu_report` it falls in.
_PLACES: Final = {
    "loop": "service_loop_ms",
    "thread": "service_threads_ms",
    "worker": "service_decode_processes_ms",
}
# What a place's CPU outside its named stages is called in the budget.
_UNNAMED: Final = {"loop": "loop_other", "thread": "threads_other", "worker": "workers_other"}


def stage_seconds(metrics_texts: Sequence[str]) -> dict[tuple[str, str], float]:
    """`moderator_cpu_seconds_total` by (stage, where), summed over the replicas' texts."""
    out: dict[tuple[str, str], float] = {}
    for text in metrics_texts:
        for stage, where, value in _CPU_SAMPLE.findall(text):
            out[(stage, where)] = out.get((stage, where), 0.0) + float(value)
    return out


def stage_budget(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], cpu: dict[str, Any]
) -> dict[str, float]:
    """µs per event by stage (`moderator.cpu.STAGES`, wherever it ran), plus what /proc saw
    that no stage claimed, per place: `loop_other` is the event loop's CPU outside its named
    stages (aiokafka's fetch above all: socket reads, protocol decoding, record unpacking;
    then asyncio's scheduling, metrics, dead letters), `threads_other` the replicas' other
    threads outside theirs (the pipes to the decode processes, ONNX Runtime's own pool),
    `workers_other` the decode processes outside theirs (taking work, sending pixels back)."""
    n = max(1, int(cpu["events"]))
    keys = set(after) | set(before)
    used = {k: 1e6 * (after.get(k, 0.0) - before.get(k, 0.0)) / n for k in keys}
    budget = dict.fromkeys(STAGES, 0.0)
    for (stage, _where), us in used.items():
        if stage in budget:
            budget[stage] += us
    for where, group in _PLACES.items():
        named = sum(us for (_stage, w), us in used.items() if w == where)
        budget[_UNNAMED[where]] = max(0.0, 1000 * float(cpu[group]) - named)
    order = ("loop_other", *STAGES, "threads_other", "workers_other")
    return {s: round(budget[s], 1) for s in order}


class GpuBusy:
    """NVML utilisation (% of time a kernel ran) of `devices`, sampled ten times a second
    between `start` and `stop`; nothing where NVML (nvidia-ml-py) or a GPU is missing."""

    def __init__(self, devices: Sequence[int]) -> None:
        self.wanted = bool(devices)  # a GPU run: say why, if nothing was sampled
        self._devices = list(devices)
        self._samples: dict[int, list[int]] = {d: [] for d in self._devices}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None
        self.error: str | None = None

    def start(self) -> None:
        try:
            import pynvml  # nvidia-ml-py: the `bench` extra

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(d) for d in self._devices]
        except Exception as exc:  # no package, no driver, no such device
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self._nvml = pynvml
        self._thread = threading.Thread(target=self._sample, args=(handles,), daemon=True)
        self._thread.start()

    def _sample(self, handles: list[Any]) -> None:
        while not self._stop.wait(0.1):
            for device, handle in zip(self._devices, handles, strict=True):
                try:
                    rate = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                except Exception:
                    continue
                self._samples[device].append(int(rate.gpu))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._nvml.nvmlShutdown()
        if self.error is not None:
            return {"gpu_busy_error": self.error}
        return {
            "gpu_busy_pct": {
                str(d): round(sum(s) / len(s), 1) for d, s in self._samples.items() if s
            }
        }


@dataclass
class Watch:
    """What a run watches and where its processes run: the broker's processes, the cores the
    system under test is pinned to once ready (None: not pinned), and the GPUs to sample."""

    broker: list[int]
    service_cores: set[int] | None
    gpus: list[int]

    def meter(self, fleet_pids: Callable[[], Sequence[int]]) -> CpuMeter:
        if self.service_cores is not None:
            pin(fleet_pids(), self.service_cores)
        return CpuMeter(fleet_pids, self.broker)


def split_cores(broker: str | None, load: str | None) -> dict[str, set[int]] | None:
    """The host's cores for the broker, the load generator and the service (the rest), or
    None when neither is given. Raises ValueError for cores this process may not use."""
    if not broker and not load:
        return None
    available = os.sched_getaffinity(0)
    split = {"broker": parse_cores(broker or ""), "load": parse_cores(load or "")}
    for name, cores in split.items():
        if not cores <= available:
            raise ValueError(f"{name} cores {sorted(cores - available)} are not on this host")
    split["service"] = available - split["broker"] - split["load"]
    if not split["service"]:
        raise ValueError("no cores left for the service")
    return split


def core_list(cores: set[int]) -> str:
    """{0, 1, 2, 5} → "0-2,5"."""
    out: list[str] = []
    for core in sorted(cores):
        if out and core == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = out[-1].split("-")[0] + f"-{core}"
        else:
            out.append(str(core))
    return ",".join(out)
