"""The fetcher's connection pool: HTTP/1.1 connections through the guard, kept per origin.

httpcore's `AsyncConnectionPool` rescans every pooled connection several times per request: a
quadratic count of idle connections and a `poll()` plus an attribute lookup per idle socket
(encode/httpcore#1035, still in 1.0.9). With 32 connections open that was about half of the
~5 ms of event-loop CPU a 170 KB fetch cost, and it grows with the square of open connections.
`ConnectionPool` keeps idle connections in a stack per origin instead, so a request looks at the
connection it reuses and nothing else. Its connections drive h11 themselves rather than through
httpcore's `AsyncHTTP11Connection`, whose two anyio locks per request (each a trip through the
event loop, and each importing the absent sniffio afresh: encode/httpcore#1103), tracing hooks
and validation cost about as much again as h11 itself.

Connections are opened by the network backend the fetcher gives it, `GuardedBackend`, so every
connection is still made to an address the guard has just checked, TLS still uses the URL's
hostname for SNI and verification, and a pooled connection stays on the address it was opened
to. They are keyed by (scheme, host, port) as the URL spells them, as httpcore's pool keys them.
Failures are httpcore's exceptions, as from httpcore's own connections.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import h11
import httpcore

Origin = tuple[bytes, bytes, int]  # scheme, host, port
Headers = list[tuple[bytes, bytes]]

# asyncio's socket transport receives up to 256 KiB per recv(); reading less would split each of
# those into several passes through h11 and the body's iterators. The max_bytes bound may be
# overshot by one read.
READ_BYTES = 256 * 1024
_MAX_HEAD_BYTES = 100 * 1024  # response line and headers, as httpcore allows


class _Connection:
    """One HTTP/1.1 connection: one exchange at a time, kept alive between them when it can."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, keepalive_expiry_s: float) -> None:
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self._keepalive_expiry_s = keepalive_expiry_s
        self._idle_since: float | None = None  # None while in use
        self._closed = False

    def has_expired(self) -> bool:
        """For an idle connection: its keep-alive period elapsed, or the server closed it."""
        if self._idle_since is None or self._closed:
            return True
        if time.monotonic() - self._idle_since > self._keepalive_expiry_s:
            return True
        return bool(self._stream.get_extra_info("is_readable"))  # EOF, or bytes nobody asked for

    async def send(
        self, target: bytes, headers: Headers, limit_s: float | None
    ) -> tuple[int, bytes, Headers]:
        """Sends a GET; returns the response's status, reason and headers (body still unread)."""
        self._idle_since = None
        try:
            request = h11.Request(method=b"GET", target=target, headers=headers)
            data = (self._h11.send(request) or b"") + (self._h11.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            await self.aclose()
            raise httpcore.LocalProtocolError(str(exc)) from exc
        try:
            await self._stream.write(data, timeout=limit_s)
            while True:
                event = await self._next_event(limit_s)
                if isinstance(event, h11.Response):
                    return event.status_code, event.reason, list(event.headers.raw_items())
                if not isinstance(event, h11.InformationalResponse):  # 1xx: the real one follows
                    raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__}")
        except BaseException:
            await self.aclose()
            raise

    async def body(self, limit_s: float | None) -> AsyncGenerator[bytes, None]:
        """The response body, one network read's worth at a time."""
        while True:
            event = await self._next_event(limit_s)
            if isinstance(event, h11.Data):
                yield event.data
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")

    async def _next_event(self, limit_s: float | None) -> h11.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpcore.RemoteProtocolError(str(exc)) from exc
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # only after a complete response, which no caller reads past
                raise httpcore.RemoteProtocolError("read past the end of the response")
            data = await self._stream.read(READ_BYTES, timeout=limit_s)
            if not data and self._h11.their_state is h11.SEND_RESPONSE:
                message = "Server disconnected without sending a response."
                raise httpcore.RemoteProtocolError(message)
            self._h11.receive_data(data)

    async def finish(self) -> bool:
        """After the response: idle again (True) if it was read to its end and may be reused."""
        if not self._closed and self._h11.states == {
            h11.CLIENT: h11.DONE,
            h11.SERVER: h11.DONE,
        }:
            self._h11.start_next_cycle()
            self._idle_since = time.monotonic()
            return True
        await self.aclose()
        return False

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stream.aclose()


@dataclass(slots=True)
class Response:
    """Status and headers of a response whose body is still on its connection.

    Read the body with `body()`; `aclose` (always) gives the connection back to the pool, or
    closes it if the body was not read to its end.
    """

    status: int
    reason: bytes
    headers: Headers
    _pool: ConnectionPool
    _origin: Origin
    _connection: _Connection
    _read_limit_s: float | None
    _closed: bool = False

    def header(self, name: bytes) -> str | None:
        """A header's value, repeats joined with ", " as HTTP defines; None if absent.

        UTF-8 where the bytes decode as such (a raw UTF-8 Location, say), else Latin-1.
        """
        values = [v for k, v in self.headers if k.lower() == name]
        if not values:
            return None
        raw = b", ".join(values)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def body(self) -> AsyncGenerator[bytes, None]:
        return self._connection.body(self._read_limit_s)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        reusable = False
        try:
            reusable = await self._connection.finish()
        finally:
            if reusable:
                await self._pool._checkin(self._origin, self._connection)
            else:
                self._pool._forget(self._connection)


class ConnectionPool:
    """Idle HTTP/1.1 connections in a stack per origin; at most `max_connections` open at once.

    A request reuses its origin's most recently idle connection unless it has expired
    (keep-alive elapsed, or the server closed it). Otherwise it opens one if a slot is free, or
    closes an idle connection to another origin to free one, or else waits: a connection given
    back goes to the first request waiting for its origin, or is closed to free a slot when only
    requests for other origins wait. A connection goes back at all only when its response was
    read to the end. Expired idle connections are closed by a sweep at most once per keep-alive
    period, during requests.
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
        self._count = 0  # connections open or being opened, each holding a slot
        self._open: set[_Connection] = set()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._waiters: deque[tuple[Origin, asyncio.Future[_Connection | None]]] = deque()
        self._next_sweep = time.monotonic() + keepalive_expiry_s

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    async def request(
        self, origin: Origin, target: bytes, headers: Headers, limit_s: float | None
    ) -> Response:
        """GET `target` from `origin`; every network step (connect, write, read) gets `limit_s`.

        Raises httpcore's exceptions, and whatever the backend raises for a refused address.
        """
        connection = await self._acquire(origin, limit_s)
        try:
            status, reason, response_headers = await connection.send(target, headers, limit_s)
        except BaseException:
            self._forget(connection)  # send closed it
            raise
        return Response(status, reason, response_headers, self, origin, connection, limit_s)

    async def _acquire(self, origin: Origin, limit_s: float | None) -> _Connection:
        if time.monotonic() >= self._next_sweep:
            await self._sweep()
        while True:
            stack = self._idle.get(origin)
            while stack:
                connection = stack.pop()
                if not connection.has_expired():
                    return connection
                await self._discard(connection)
            if self._count < self._max:
                return await self._connect(origin, limit_s)
            if await self._close_one_idle():
                continue
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append((origin, waiter))
            try:
                handed = await waiter
            except asyncio.CancelledError:
                await self._abandon(origin, waiter)
                raise
            if handed is not None:
                return handed
            # else a slot was freed: try again

    async def _abandon(self, origin: Origin, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiting request was cancelled: pass on what it was handed, if anything."""
        if not waiter.done() or waiter.cancelled():
            self._waiters.remove((origin, waiter))
            return
        handed = waiter.result()
        if handed is None:
            self._wake_one()
        else:
            await self._checkin(origin, handed)

    async def _connect(self, origin: Origin, limit_s: float | None) -> _Connection:
        scheme, host_bytes, port = origin
        host = host_bytes.decode("ascii")
        self._count += 1
        try:
            stream = await self._backend.connect_tcp(host, port, timeout=limit_s)
            if scheme == b"https":
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
        connection = _Connection(stream, self._keepalive_expiry_s)
        self._open.add(connection)
        return connection

    async def _checkin(self, origin: Origin, connection: _Connection) -> None:
        """Take back an idle connection: for a waiting request of its origin, or to keep."""
        for i, (wanted, waiter) in enumerate(self._waiters):
            if wanted == origin and not waiter.done():
                del self._waiters[i]
                waiter.set_result(connection)
                return
        if self._waiters:  # only other origins wait: free a slot for them
            await self._discard(connection)
            return
        self._idle.setdefault(origin, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        """`connection` no longer holds a slot: tell the first waiting request."""
        if connection in self._open:
            self._open.discard(connection)
            self._count -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _discard(self, connection: _Connection) -> None:
        """Free the slot first, so that even a cancelled close frees it."""
        self._forget(connection)
        await connection.aclose()

    async def _close_one_idle(self) -> bool:
        for stack in self._idle.values():
            if stack:
                await self._discard(stack.pop(0))  # the longest idle of its origin
                return True
        return False

    async def _sweep(self) -> None:
        self._next_sweep = time.monotonic() + self._keepalive_expiry_s
        for origin, stack in list(self._idle.items()):
            expired = [c for c in stack if c.has_expired()]
            stack[:] = [c for c in stack if c not in expired]
            if not stack:
                del self._idle[origin]
            for connection in expired:
                await self._discard(connection)

    async def aclose(self) -> None:
        self._idle.clear()
        for connection in list(self._open):
            await self._discard(connection)
