"""An httpcore network backend on asyncio's own transports, for the fetcher's connections.

httpcore's default (anyio) stream costs a cancel scope per read and, over TLS, hands back one
TLS record (≤16 KiB) per read, so a 170 KB HTTPS body took ~16 passes through h11 and the body's
iterators. asyncio's transports already read up to 256 KiB per wake-up and decrypt everything
available at once, and a protocol that keeps what arrived lets one read return all of it.

`AsyncioBackend` only connects to what it is given: `GuardedBackend` gives it checked IP
addresses, never names (asyncio does not resolve an IP literal). Errors are httpcore's
(ConnectError, ConnectTimeout, ReadError, ReadTimeout, WriteError, WriteTimeout), each chained
to its cause, as httpcore's own backends raise them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import httpcore

_PAUSE_AT = 1024 * 1024  # stop reading the socket with this much unread (a slow consumer)
_RESUME_AT = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Keeps what the transport delivers until the connection's next read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: Exception | None = None
        self.reading_paused = False
        self.writing_paused = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= _PAUSE_AT and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport: HTTP/1.1 never half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, limit_s: float | None) -> None:
        """Until something happens: data, EOF, loss, or the write buffer draining."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if limit_s is None:
                await self._waiter
            else:
                async with asyncio.timeout(limit_s):
                    await self._waiter
        finally:
            self._waiter = None


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        p = self._protocol
        try:
            while not p.chunks and not p.eof:
                await p.wait(timeout)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("timed out reading") from exc
        if not p.chunks:
            if p.error is not None:
                raise httpcore.ReadError(str(p.error) or type(p.error).__name__) from p.error
            return b""
        data = p.chunks.popleft()
        if len(data) > max_bytes:
            p.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        elif p.chunks and len(data) + len(p.chunks[0]) <= max_bytes:
            parts = [data]
            size = len(data)
            while p.chunks and size + len(p.chunks[0]) <= max_bytes:
                size += len(p.chunks[0])
                parts.append(p.chunks.popleft())
            data = b"".join(parts)
        p.buffered -= len(data)
        if p.reading_paused and p.buffered < _RESUME_AT:
            p.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        p = self._protocol
        if p.eof or self._transport.is_closing():
            raise httpcore.WriteError("connection closed")
        self._transport.write(buffer)
        try:
            while p.writing_paused and not p.eof:
                await p.wait(timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout("timed out writing") from exc
        if p.error is not None:
            raise httpcore.WriteError(str(p.error)) from p.error

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from exc
        except (OSError, ssl.SSLError) as exc:  # SSLCertVerificationError among them
            self._transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            self._transport.abort()
            raise
        assert transport is not None
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # for an idle connection: the server closed it, or misbehaved
            return bool(self._protocol.chunks) or self._protocol.eof
        names = {"ssl_object": "ssl_object", "server_addr": "peername", "client_addr": "sockname"}
        if info in names:
            return self._transport.get_extra_info(names[info])
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """TCP connections to IP addresses through the running loop's transports."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if local_address is not None or socket_options:
            raise httpcore.ConnectError("local_address and socket_options are not supported")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(_Protocol, host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        assert isinstance(transport, asyncio.Transport)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
