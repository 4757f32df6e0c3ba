"""A private Kafka broker + Redis pair, started and stopped with scripts/services.sh.

Faults that stop a broker or a Redis must never touch the shared ones on 9092/6379, so each
fault run gets its own stack on other ports with its own state directory. `services.sh down
kafka` keeps the broker's data directory, so topics and committed offsets survive a restart,
exactly as on a real broker; removing the state directory at the end is what wipes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from moderator.errors import ConfigError

# Stacks run from a checkout: the script lives next to the package, not inside it.
SERVICES_SH = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
_SCRIPT_TIMEOUT_S = 300  # a cold broker on a loaded 2-core runner, plus the state lock wait


@dataclass
class Stack:
    """Kafka on `kafka_port` (controller +1, SASL_SSL +2 when secure) and Redis on `redis_port`."""

    kafka_port: int
    redis_port: int
    state_dir: Path
    security: str = "plaintext"  # or "sasl_ssl" (scripts/services.sh KAFKA_SECURITY)
    sasl_password: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port + 2}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / f"kafka-{self.kafka_port}" / "tls"

    def _env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_PORT": str(self.kafka_port),
            "REDIS_PORT": str(self.redis_port),
            "MODERATOR_SERVICES_DIR": str(self.state_dir),
            "KAFKA_SECURITY": self.security,
        }
        if self.sasl_password is not None:
            env["KAFKA_SASL_PASSWORD"] = self.sasl_password
        return env

    def run_script(self, *args: str) -> None:
        """scripts/services.sh ARGS with this stack's ports; raises with its output on failure."""
        if not SERVICES_SH.is_file():
            raise ConfigError(f"{SERVICES_SH} not found: fault runs need a source checkout")
        done = subprocess.run(
            [str(SERVICES_SH), *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=_SCRIPT_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise ConfigError(
                f"services.sh {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    async def script(self, *args: str) -> None:
        await asyncio.to_thread(self.run_script, *args)

    def _pid(self, service: str) -> int | None:
        name = f"kafka-{self.kafka_port}" if service == "kafka" else f"redis-{self.redis_port}"
        try:
            return int((self.state_dir / name / f"{service}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def signal(self, service: str, sig: signal.Signals) -> int:
        """Send `sig` to this stack's `service` ("kafka" or "redis"); returns its pid."""
        pid = self._pid(service)
        if pid is None:
            raise ConfigError(f"{service} of the stack in {self.state_dir} is not running")
        os.kill(pid, sig)
        return pid

    async def hard_kill(self, service: str) -> int:
        """SIGKILL `service` (no clean shutdown) and wait until it is gone."""
        pid = self.signal(service, signal.SIGKILL)
        await asyncio.to_thread(_wait_gone, pid)
        return pid

    def down(self, *, remove: bool = True) -> None:
        """Stop both services; with `remove`, delete all their state."""
        try:
            self.run_script("down")
        finally:
            if remove:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.state_dir)


def _wait_gone(pid: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        if time.monotonic() > deadline:
            raise ConfigError(f"pid {pid} survived SIGKILL for {timeout_s:g} s")
        time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
