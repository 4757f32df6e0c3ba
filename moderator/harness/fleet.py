"""Replicas of `moderator serve` (or of another command) as subprocesses, as an orchestrator
would run them: the fault suite's service under test and the benchmark's.

A `Fleet` holds the wanted number of replicas, each in a process group of its own. Supervised
(the fault suite), a replica that exits on its own (exit 1 on a fatal error, say while the
broker is away) is restarted after a short backoff and counted in `restarts`, and the fleet's
peak memory is tracked; the faults a scenario injects (SIGKILL, scale-down) are not counted.
Unsupervised (the benchmark), such an exit is an error that `check_alive` raises, and nothing
scans /proc while figures are being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import httpx

from moderator.errors import ConfigError
from moderator.harness.ports import accepts, free_port

SERVE: Final = ("-m", "moderator", "serve")
# The checkout (or site-packages) this package runs from: children run the same code.
_CODE_ROOT: Final = Path(__file__).resolve().parents[2]
_WATCH_S = 0.2  # how often a supervised fleet notices exits
_READY_POLL_S = 0.05
_RESTART_BACKOFF_S = (0.5, 4.0)  # first and largest delay before restarting a crashed replica
_STOP_TIMEOUT_S = 60.0  # SIGTERM drain (20 s by default) plus shutdown, then SIGKILL
_STARTUP_S = 60.0  # longest wait for a starting replica to install its signal handlers
_RUNNING_LINE = "http listening"  # logged by `serve` right after installing them

ReplicaEnv = Callable[[int, int], Mapping[str, str]]
"""(replica index, its HTTP port) → that replica's own settings."""


def kafka_env(bootstrap: str, topics: Mapping[str, str], group: str) -> dict[str, str]:
    """The settings that point `serve` at a run's topics ("input", "verdicts", "dlq") as a
    member of `group`; topic creation is off, since the run made its topics."""
    return {
        "MODERATOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MODERATOR_KAFKA__GROUP_ID": group,
        "MODERATOR_KAFKA__INPUT_TOPIC": topics["input"],
        "MODERATOR_KAFKA__VERDICT_TOPIC": topics["verdicts"],
        "MODERATOR_KAFKA__DLQ_TOPIC": topics["dlq"],
        "MODERATOR_KAFKA__CREATE_TOPICS": "false",
    }


def child_env(env: Mapping[str, str], *, inherit_settings: bool = True) -> dict[str, str]:
    """This process's environment with `env` over it. Without `inherit_settings`, this
    process's own MODERATOR_* settings are left out: the caller sets every one it means."""
    base = {
        k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("MODERATOR_")
    }
    merged = base | dict(env)
    # This checkout first, unless `env` names its own (another checkout's service, measured
    # by this one's bench), then whatever this process was given.
    merged["PYTHONPATH"] = os.pathsep.join(
        filter(None, [env.get("PYTHONPATH"), str(_CODE_ROOT), base.get("PYTHONPATH")])
    )
    if env.get("PYTHONPATH"):  # `-m` would put the working directory (a checkout) first
        merged["PYTHONSAFEPATH"] = "1"
    return merged


def start_serve(
    env: Mapping[str, str],
    log: Path,
    *,
    command: Sequence[str] = SERVE,
    inherit_settings: bool = True,
    cores: frozenset[int] | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m moderator serve` (or `python COMMAND`) with `env` (see `child_env`), its
    output appended to `log`.

    In a process group of its own, like a container: a SIGKILL then takes the decode pool's
    forkserver and workers along (see `kill_group`) instead of orphaning them. With `cores`,
    it runs on those from its first instruction: thread pools sized at import (OpenBLAS,
    ONNX Runtime) see them, and its decode processes inherit them.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, *command],
            env=child_env(env, inherit_settings=inherit_settings),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if cores is None else partial(os.sched_setaffinity, 0, cores),
        )


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a `start_serve` process and everything in its group (a container kill)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The child processes of `pid` (of all its threads), from /proc; none once it exited."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread or the process ended meanwhile
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (decode workers sit under a replica), from /proc."""
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (decode workers sit under it)."""
    total = 0
    for current in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:  # exited meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def cpu_s(pid: int, thread: int | None = None) -> float:
    """utime + stime of a process (all its threads) or of one of its threads, from /proc;
    0 once it is gone."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        stat = Path(path).read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_ok(url: str) -> bool:
    """GET `url` answers 200 (a readiness probe)."""
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _contains(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def _last_lines(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass(slots=True)
class Replica:
    """One replica's process, its log file and, where the fleet gave it one, its HTTP port."""

    index: int
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None
    expected_exit: bool = False  # set when the fleet stops or kills it on purpose

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        if self.port is None:
            raise ConfigError(f"replica {self.index} has no HTTP port of its own")
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Fleet:
    """Replicas of one command sharing one environment (for `serve`: one consumer group).

    With `replica_env`, each replica gets an HTTP port of its own (`Replica.port`) and that
    function's settings for it over `env`: by default, `wait_ready` then asks each one's
    /readyz; `ready` says otherwise how to tell a replica is ready.
    """

    env: Mapping[str, str]
    log_dir: Path
    replica_env: ReplicaEnv | None = None
    ready: Callable[[Replica], bool] | None = None
    name: str = "moderator serve"  # in error messages
    command: Sequence[str] = SERVE
    supervise: bool = True
    inherit_settings: bool = True
    cores: frozenset[int] | None = None  # every replica pinned to these from its start
    replicas: list[Replica] = field(default_factory=list)
    restarts: int = 0  # replicas that exited on their own and were started again
    exit_codes: list[int] = field(default_factory=list)  # of replicas stopped on purpose
    crash_codes: list[int] = field(default_factory=list)  # of replicas that exited on their own
    peak_rss: int = 0  # supervised fleets only
    _launched: int = 0
    _watcher: asyncio.Task[None] | None = None
    _backoff: float = _RESTART_BACKOFF_S[0]

    def _launch(self) -> Replica:
        index = self._launched
        self._launched += 1
        env = dict(self.env)
        port = None
        if self.replica_env is not None:
            port = free_port()
            env |= self.replica_env(index, port)
        log = self.log_dir / f"serve-{index:02d}.log"
        process = start_serve(
            env,
            log,
            command=self.command,
            inherit_settings=self.inherit_settings,
            cores=self.cores,
        )
        return Replica(index, process, log, port)

    async def scale(self, count: int) -> None:
        """Start replicas, or stop the newest ones gracefully (SIGTERM), until `count` run."""
        while len(self.replicas) < count:
            self.replicas.append(self._launch())
        while len(self.replicas) > count:
            replica = self.replicas.pop()
            await self._stop(replica, signal.SIGTERM)
        if self.supervise and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="harness-fleet")

    def kill(self, position: int = 0) -> int:
        """SIGKILL one replica and start its replacement at once; returns the killed pid."""
        replica = self.replicas[position]
        replica.expected_exit = True
        kill_group(replica.process)
        replica.process.wait()
        self.replicas[position] = self._launch()
        return replica.pid

    async def stop(self) -> list[int]:
        """SIGTERM every replica (drain), wait, and return their exit codes."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        codes = await asyncio.gather(*(self._stop(r, signal.SIGTERM) for r in self.replicas))
        self.replicas.clear()
        return list(codes)

    def _running(self, replica: Replica) -> bool:
        """The replica has installed its signal handlers, so a SIGTERM drains it. Other
        commands than `serve` get the signal at once, whatever their state."""
        if tuple(self.command) != SERVE or replica.process.poll() is not None:
            return True
        if replica.port is not None and accepts(replica.port):
            return True  # its HTTP server starts right after the handlers
        return _contains(replica.log, _RUNNING_LINE)

    async def _stop(self, replica: Replica, sig: signal.Signals) -> int:
        replica.expected_exit = True
        # A replica still importing has no SIGTERM handler yet and would die of the signal
        # (-15) instead of draining; wait until it says it is running.
        for _ in range(int(_STARTUP_S / _WATCH_S)):
            if await asyncio.to_thread(self._running, replica):
                break
            await asyncio.sleep(_WATCH_S)
        if replica.process.poll() is None:
            replica.process.send_signal(sig)
        try:
            code = await asyncio.to_thread(replica.process.wait, _STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_group(replica.process)
            code = await asyncio.to_thread(replica.process.wait)
        kill_group(replica.process)  # anything it left behind in its group
        self.exit_codes.append(code)
        return code

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_S)
            rss = 0
            for position, replica in enumerate(self.replicas):
                code = replica.process.poll()
                if code is None:
                    rss += tree_rss_bytes(replica.pid)
                    continue
                if replica.expected_exit:
                    continue
                # Crashed on its own: restart with backoff, as a Deployment would.
                kill_group(replica.process)
                self.crash_codes.append(code)
                self.restarts += 1
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, _RESTART_BACKOFF_S[1])
                if position < len(self.replicas) and self.replicas[position] is replica:
                    self.replicas[position] = self._launch()
            self.peak_rss = max(self.peak_rss, rss)

    def reset_backoff(self) -> None:
        self._backoff = _RESTART_BACKOFF_S[0]

    def check_alive(self) -> None:
        """Raise `ConfigError`, with the end of its log, if a replica exited on its own."""
        for replica in self.replicas:
            code = replica.process.poll()
            if code is not None and not replica.expected_exit:
                raise ConfigError(
                    f"{self.name} exited with {code} before finishing:\n" + _last_lines(replica.log)
                )

    async def wait_ready(self, timeout_s: float) -> tuple[float, float]:
        """Wait until every replica is ready; returns the monotonic times at which the first
        and the last one was. Raises `ConfigError` if one exits first, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        first: float | None = None
        while True:
            flags = await asyncio.to_thread(self._ready_flags)
            now = time.monotonic()
            if any(flags) and first is None:
                first = now
            if all(flags):
                return first or now, now
            self.check_alive()
            if now > deadline:
                raise ConfigError(f"{self.name} not ready after {timeout_s:.0f} s")
            await asyncio.sleep(_READY_POLL_S)

    def _ready_flags(self) -> list[bool]:
        if self.ready is not None:
            return [self.ready(r) for r in self.replicas]
        return [http_ok(r.url("/readyz")) for r in self.replicas]

    def urls(self, path: str) -> list[str]:
        """`path` on the HTTP port of each replica that has one of its own (say /metrics)."""
        return [r.url(path) for r in self.replicas if r.port is not None]

    async def wait_logged(self, text: str, timeout_s: float) -> bool:
        """True once every running replica's log contains `text`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if all(_contains(r.log, text) for r in self.replicas):
                return True
            await asyncio.sleep(0.5)
        return False

    def count_logged(self, text: str) -> int:
        """Lines containing `text` over every log this fleet wrote."""
        count = 0
        for log in self.log_dir.glob("serve-*.log"):
            with contextlib.suppress(OSError):
                count += log.read_text(errors="replace").count(text)
        return count

    def log_tail(self, chars: int = 4000) -> str:
        """The end of every replica log, for failure messages."""
        parts = []
        for log in sorted(self.log_dir.glob("serve-*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)
