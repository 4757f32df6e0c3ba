"""`/metrics`, `/healthz` and `/readyz` on a tiny asyncio HTTP/1.1 server.

Serving from the service's own event loop is deliberate: `/healthz` answering proves the loop
is not blocked, which is exactly what a liveness probe should learn. No web framework: three
GET routes do not justify a dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from moderator.log import get
from moderator.service.metrics import Metrics

log = get("http")

_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_WRITE_TIMEOUT_S = 10.0  # a client that does not read its answer is dropped after this
_CLOSE_TIMEOUT_S = 1.0  # then the connection is aborted rather than flushed


class _HeadTooLarge(Exception):
    """The request line and headers are over the size or count limit."""


class HealthServer:
    """Answers probes and scrapes. `readiness()` returns (ready, reasons-not-ready).

    Every connection is bounded, so that no client can hold the loop's sockets: the request
    line and all headers must arrive within `head_deadline_s` in total (a client trickling one
    header line at a time is cut there, not per line), in at most `max_head_bytes` and
    `max_headers` lines; and at most `max_connections` are open at once. A connection over
    that cap is answered 503 and closed without reading anything. Probes and scrapes need one
    connection each for a few milliseconds, so the defaults leave them ample room.
    """

    def __init__(
        self,
        metrics: Metrics,
        readiness: Callable[[], tuple[bool, list[str]]],
        liveness: Callable[[], tuple[bool, str]] | None = None,
        *,
        max_connections: int = 64,
        head_deadline_s: float = 5.0,
        max_head_bytes: int = 16 * 1024,
        max_headers: int = 64,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._liveness = liveness or (lambda: (True, "ok"))
        self._server: asyncio.Server | None = None
        self._max_connections = max_connections
        self._head_deadline_s = head_deadline_s
        self._max_head_bytes = max_head_bytes
        self._max_headers = max_headers
        self._open = 0
        self._refused = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return self._open

    async def start(self, host: str, port: int) -> None:
        # The reader's limit bounds one line: a header line longer than the whole head budget
        # fails inside readline instead of being buffered.
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=self._max_head_bytes
        )
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
        if self._open >= self._max_connections:
            self._refuse(writer)
            await _close(writer)
            return
        self._open += 1
        try:
            await self._exchange(reader, writer)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._open -= 1
            await _close(writer)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        self._refused += 1
        if self._refused == 1 or self._refused % 1000 == 0:
            log.warning(
                "http connection refused: too many open",
                extra={"fields": {"limit": self._max_connections, "refused": self._refused}},
            )
        writer.write(_response(503, "text/plain", b"too many connections\n"))

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(self._head_deadline_s):
                request_line = await self._read_head(reader)
        except TimeoutError:
            status, ctype, body = 408, "text/plain", b"request head not received in time\n"
        except (_HeadTooLarge, ValueError):  # ValueError: one line over the reader's limit
            status, ctype, body = 431, "text/plain", b"request head too large\n"
        else:
            if request_line is None:
                return  # closed before sending a request
            parts = request_line.decode("latin-1").split()
            head_only = bool(parts) and parts[0] == "HEAD"
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            else:
                status, ctype, body = self._route(parts[1].split("?", 1)[0])
        async with asyncio.timeout(_WRITE_TIMEOUT_S):
            writer.write(_response(status, ctype, b"" if head_only else body, len(body)))
            await writer.drain()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The request line, after reading every header up to the blank line (or EOF)."""
        request_line = await reader.readline()
        if not request_line:
            return None
        size, count = len(request_line), 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                return request_line
            size += len(line)
            count += 1
            if size > self._max_head_bytes or count > self._max_headers:
                raise _HeadTooLarge


def _response(status: int, ctype: str, body: bytes, length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close, waiting briefly for the answer to flush; abort a peer that does not take it."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except ConnectionError:
        pass
