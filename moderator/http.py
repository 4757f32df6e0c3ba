"""`/metrics`, `/healthz` and `/readyz` on a tiny asyncio HTTP/1.1 server.

Serving from the service's own event loop is deliberate: `/healthz` answering proves the loop
is not blocked, which is exactly what a liveness probe should learn. No web framework: three
GET routes do not justify a dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from moderator.log import get
from moderator.metrics import Metrics

log = get("http")
_MAX_REQUEST_LINE = 8192
_READ_TIMEOUT_S = 5.0  # a probe that cannot send a request line in 5 s is not a probe


class HealthServer:
    """Answers probes and scrapes. `readiness()` returns (ready, reasons-not-ready)."""

    def __init__(
        self,
        metrics: Metrics,
        readiness: Callable[[], tuple[bool, list[str]]],
        liveness: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._liveness = liveness or (lambda: (True, "ok"))
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("http listening", extra={"fields": {"host": host, "port": self.port}})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            # Refresh readiness on every scrape too: without a probe calling /readyz (plain
            # `docker run`), the gauge would otherwise stay at its initial 0.
            self._metrics.ready.set(1 if self._readiness()[0] else 0)
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry)
        if path == "/healthz":
            alive, why = self._liveness()
            return (200 if alive else 503), "text/plain", why.encode() + b"\n"
        if path == "/readyz":
            ready, reasons = self._readiness()
            self._metrics.ready.set(1 if ready else 0)
            body = "ready\n" if ready else "not ready: " + "; ".join(reasons) + "\n"
            return (200 if ready else 503), "text/plain", body.encode()
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
            parts = line[:_MAX_REQUEST_LINE].decode("latin-1").split()
            # Drain headers so clients that wait for us to read them are not confused.
            while True:
                header = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
                if header in (b"\r\n", b"\n", b""):
                    break
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            else:
                status, ctype, body = self._route(parts[1].split("?", 1)[0])
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if parts and parts[0] == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
