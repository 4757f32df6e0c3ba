"""The fetcher's connection pool: HTTP/1.1 connections through the guard, kept per origin.

httpcore's `AsyncConnectionPool` rescans every pooled connection several times per request: a
quadratic count of idle connections and a `poll()` plus an attribute lookup per idle socket
(encode/httpcore#1035, still in 1.0.9). With 32 connections open that was about half of the
~5 ms of event-loop CPU a 170 KB fetch cost, and it grows with the square of open connections.
`ConnectionPool` keeps idle connections in a stack per origin instead, so a request looks at the
connection it reuses and nothing else.

The connections themselves are httpcore's `AsyncHTTP11Connection` (h11, streamed bodies) over
streams that `GuardedBackend` opened, so every connection is still made to an address the guard
has just checked, TLS still uses the URL's hostname for SNI and verification, and a pooled
connection stays on the address it was opened to. Connections are keyed by (scheme, host, port)
as the URL spells them, as httpcore's pool keys them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterator

import httpcore

_Key = tuple[bytes, bytes, int]


class _Connection(httpcore.AsyncHTTP11Connection):
    """httpcore's HTTP/1.1 connection, reading up to 256 KiB at a time instead of 64 KiB.

    asyncio's socket transport receives up to 256 KiB per recv(); at 64 KiB a read, each of
    those was split into four passes through h11 and the body's iterators (~25 % of the CPU of
    a 170 KB fetch over plain HTTP). The max_bytes bound may be overshot by one read.
    """

    READ_NUM_BYTES = 256 * 1024


def _remember_missing_sniffio() -> None:
    """Make `import sniffio` fail at once when sniffio is not installed.

    httpcore imports sniffio afresh in every lock and cancellation shield it sets up (at least one
    per request), falling back to asyncio when the import fails; Python does not cache a failed
    import, so each one searched sys.path again: ~0.15 ms a time, ~1 ms per fetch. A `None` in
    sys.modules is Python's own marker for "this import fails" (encode/httpcore#1103); nothing
    changes when sniffio is installed.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


_remember_missing_sniffio()


class ConnectionPool:
    """Idle HTTP/1.1 connections in a stack per origin; at most `max_connections` open at once.

    A request reuses its origin's most recently idle connection unless httpcore says it has
    expired (keep-alive elapsed, or the server closed it). Otherwise it opens one if a slot is
    free, or closes an idle connection to another origin to free one, or else waits: a
    connection given back goes to the first request waiting for its origin, or is closed to free
    a slot when only requests for other origins wait. A connection goes back at all only when
    its response was read to the end. Expired idle connections are closed by a sweep at most
    once per keep-alive period, during requests.
    """

    def __init__(
        self,
        backend: httpcore.AsyncNetworkBackend,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int,
        keepalive_expiry_s: float,
    ) -> None:
        self._backend = backend
        self._ssl_context = ssl_context
        ssl_context.set_alpn_protocols(["http/1.1"])
        self._max = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._count = 0  # connections open or being opened
        self._open: set[_Connection] = set()
        self._idle: dict[_Key, list[_Connection]] = {}
        self._waiters: deque[tuple[_Key, asyncio.Future[_Connection | None]]] = deque()
        self._next_sweep = time.monotonic() + keepalive_expiry_s

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        origin = request.url.origin
        key = (origin.scheme, origin.host, origin.port)
        connection = await self._acquire(key, origin, request.extensions.get("timeout", {}))
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await self._discard(connection)  # httpcore has closed it already
            raise
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_Lease(self, key, connection, response),
            extensions=response.extensions,
        )

    async def _acquire(
        self, key: _Key, origin: httpcore.Origin, timeouts: dict[str, float | None]
    ) -> _Connection:
        if time.monotonic() >= self._next_sweep:
            await self._sweep()
        while True:
            stack = self._idle.get(key)
            while stack:
                connection = stack.pop()
                if connection.is_idle() and not connection.has_expired():
                    return connection
                await self._discard(connection)
            if self._count < self._max:
                return await self._connect(origin, timeouts.get("connect"))
            if await self._close_one_idle():
                continue
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append((key, waiter))
            try:
                handed = await waiter
            except asyncio.CancelledError:
                await self._abandon(key, waiter)
                raise
            if handed is not None:
                return handed
            # else a slot was freed: try again

    async def _abandon(self, key: _Key, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiting request was cancelled: pass on what it was handed, if anything."""
        if not waiter.done() or waiter.cancelled():
            self._waiters.remove((key, waiter))
            return
        handed = waiter.result()
        if handed is None:
            self._wake_one()
        else:
            await self._checkin(key, handed)

    async def _connect(self, origin: httpcore.Origin, limit_s: float | None) -> _Connection:
        self._count += 1
        try:
            host = origin.host.decode("ascii")
            stream = await self._backend.connect_tcp(host, origin.port, timeout=limit_s)
            if origin.scheme == b"https":
                try:
                    stream = await stream.start_tls(
                        self._ssl_context, server_hostname=host, timeout=limit_s
                    )
                except BaseException:
                    await stream.aclose()
                    raise
        except BaseException:
            self._count -= 1
            self._wake_one()
            raise
        connection = _Connection(origin, stream, keepalive_expiry=self._keepalive_expiry_s)
        self._open.add(connection)
        return connection

    async def _checkin(self, key: _Key, connection: _Connection) -> None:
        """Give back a connection whose response is closed."""
        if not connection.is_idle() or connection not in self._open:
            await self._discard(connection)
            return
        for i, (wanted, waiter) in enumerate(self._waiters):
            if wanted == key and not waiter.done():
                del self._waiters[i]
                waiter.set_result(connection)
                return
        if self._waiters:  # only other origins wait: free a slot for them
            await self._discard(connection)
            return
        self._idle.setdefault(key, []).append(connection)

    def _wake_one(self) -> None:
        """Tell the first waiting request that a slot is free."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _discard(self, connection: _Connection) -> None:
        """Close `connection` and free its slot (first, so that a cancelled close frees it)."""
        if connection in self._open:
            self._open.discard(connection)
            self._count -= 1
            self._wake_one()
        if not connection.is_closed():
            await connection.aclose()

    async def _close_one_idle(self) -> bool:
        for stack in self._idle.values():
            if stack:
                await self._discard(stack.pop(0))  # the longest idle of its origin
                return True
        return False

    async def _sweep(self) -> None:
        self._next_sweep = time.monotonic() + self._keepalive_expiry_s
        for key, stack in list(self._idle.items()):
            expired = [c for c in stack if c.has_expired()]
            stack[:] = [c for c in stack if c not in expired]
            if not stack:
                del self._idle[key]
            for connection in expired:
                await self._discard(connection)

    async def aclose(self) -> None:
        self._idle.clear()
        for connection in list(self._open):
            await self._discard(connection)


class _Lease:
    """A response body on a pooled connection; closing it gives the connection back."""

    def __init__(
        self,
        pool: ConnectionPool,
        key: _Key,
        connection: _Connection,
        response: httpcore.Response,
    ) -> None:
        self._pool = pool
        self._key = key
        self._connection = connection
        self._response = response
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_stream():
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._response.aclose()  # idle again if the body was read to its end
        finally:
            await self._pool._checkin(self._key, self._connection)
