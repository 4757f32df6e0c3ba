"""Free local ports: for replicas' HTTP servers, image servers and private stacks."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from pathlib import Path

from moderator.errors import ConfigError

_handed_out: set[int] = set()  # ports `free_port` gave this process, never given twice


def free_port() -> int:
    """A port free now, below Linux's ephemeral range: a port the kernel hands out may be
    taken by some client's connection (Kafka's, with many replicas) between this check and
    the service's bind, as happened once on a 32-core host. Never the same port twice in one
    process, since replicas started together bind later. Elsewhere (no /proc), the kernel
    picks."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    below = [p for p in range(min(20000, max(low - 1000, 1024)), low) if p not in _handed_out]
    for port in random.sample(below, k=min(200, len(below))):
        if bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # nothing free below the range: let the kernel pick
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        _handed_out.add(chosen)
        return chosen


def free_port_block(count: int, start: int = 19100, stop: int = 19900) -> int:
    """The first port P in [start, stop) such that P .. P+count-1 all accept a bind (a
    broker's client, controller and secure listeners sit side by side)."""
    for base in range(start, stop, count):
        if all(bindable(base + k) for k in range(count)):
            return base
    raise ConfigError(f"no {count} consecutive free ports in {start}-{stop}")


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def accepts(port: int) -> bool:
    """Something on 127.0.0.1 accepts connections on `port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def wait_accepting(port: int, timeout_s: float, what: str) -> None:
    """Block until `port` accepts connections; `ConfigError` naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not accepts(port):
        if time.monotonic() > deadline:
            raise ConfigError(f"{what} did not start listening on port {port}")
        time.sleep(0.05)
