"""`moderator serve` subprocesses in one consumer group, kept alive like an orchestrator would.

A `Fleet` holds the wanted number of replicas. A replica that exits on its own (exit 1 on a
fatal error, say while the broker is away) is restarted after a short backoff and counted in
`restarts`; the faults a scenario injects (SIGKILL, scale-down) are not counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_WATCH_S = 0.2  # how often exits are noticed
_RESTART_BACKOFF_S = (0.5, 4.0)  # first and largest delay before restarting a crashed replica
_STOP_TIMEOUT_S = 60.0  # SIGTERM drain (20 s by default) plus shutdown, then SIGKILL
_STARTUP_S = 60.0  # longest wait for a starting replica to install its signal handlers
_RUNNING_LINE = "http listening"  # logged by `serve` right after installing them


def _contains(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (decode workers sit under it)."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:  # exited meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in tasks:
            with contextlib.suppress(OSError):
                stack.extend(int(c) for c in (task / "children").read_text().split())
    return total


@dataclass(slots=True)
class Replica:
    """One `moderator serve` process and its log file."""

    index: int
    process: subprocess.Popen[bytes]
    log: Path
    expected_exit: bool = False  # set when the scenario stops or kills it on purpose

    @property
    def pid(self) -> int:
        return self.process.pid


def start_serve(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m moderator serve` with `env` over this process's environment.

    In a process group of its own, like a container: a SIGKILL then takes the decode pool's
    forkserver and workers along (see `kill_group`) instead of orphaning them.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "moderator", "serve"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a `start_serve` process and everything in its group (a container kill)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Fleet:
    """Replicas of `moderator serve` sharing one environment (and so one group)."""

    env: Mapping[str, str]
    log_dir: Path
    replicas: list[Replica] = field(default_factory=list)
    restarts: int = 0  # replicas that exited on their own and were started again
    exit_codes: list[int] = field(default_factory=list)  # of replicas stopped on purpose
    crash_codes: list[int] = field(default_factory=list)  # of replicas that exited on their own
    peak_rss: int = 0
    _launched: int = 0
    _watcher: asyncio.Task[None] | None = None
    _backoff: float = _RESTART_BACKOFF_S[0]

    def _launch(self) -> Replica:
        index = self._launched
        self._launched += 1
        log = self.log_dir / f"serve-{index:02d}.log"
        return Replica(index, start_serve(self.env, log), log)

    async def scale(self, count: int) -> None:
        """Start replicas, or stop the newest ones gracefully (SIGTERM), until `count` run."""
        while len(self.replicas) < count:
            self.replicas.append(self._launch())
        while len(self.replicas) > count:
            replica = self.replicas.pop()
            await self._stop(replica, signal.SIGTERM)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="chaos-fleet")

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

    async def _stop(self, replica: Replica, sig: signal.Signals) -> int:
        replica.expected_exit = True
        # A replica still importing has no SIGTERM handler yet and would die of the signal
        # (-15) instead of draining; wait until its first log line says it is running.
        for _ in range(int(_STARTUP_S / _WATCH_S)):
            if replica.process.poll() is not None or _contains(replica.log, _RUNNING_LINE):
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

    def reset_backoff(self) -> None:
        self._backoff = _RESTART_BACKOFF_S[0]

    def log_tail(self, chars: int = 4000) -> str:
        """The end of every replica log, for failure messages."""
        parts = []
        for log in sorted(self.log_dir.glob("serve-*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)
