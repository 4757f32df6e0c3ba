"""Test doubles for the acquire tests: a resolver table, a connector that only ever reaches
loopback, and a tiny HTTP/1.1 server on 127.0.0.1 (one request per connection)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from ipaddress import ip_address, ip_network
from typing import Any

import httpcore

from moderator.pipeline.acquire.addresses import IPAddress
from moderator.pipeline.acquire.fetch import Fetcher

HOST = "images.example.test"
LOOPBACK_ONLY = frozenset({ip_network("127.0.0.1/32")})

Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]


# --- test doubles: a resolver table and a connector that only ever reaches loopback -------------


class TableResolver:
    """Answers from a dict; unknown names fail like NXDOMAIN. Records every question."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(a) for a in self.table[host]]


class LoopbackOnly(httpcore.AsyncNetworkBackend):
    """Real TCP connections, but only to loopback IPs; records every connection attempt."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if not ip_address(host).is_loopback:  # a name here would also be a bug: ValueError
            raise AssertionError(f"the test tried to connect to {host}")
        return await self.inner.connect_tcp(host, port, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# --- a tiny HTTP/1.1 server on 127.0.0.1: one request per connection -----------------------------


@dataclass
class Seen:
    target: str
    headers: dict[str, str]


@dataclass
class TinyServer:
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Handlers (a trickling one, say) may outlive the client; `close` stops them through
        # `_stop` rather than by cancelling this task, which asyncio 3.11 would log as an error.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        exchange = asyncio.ensure_future(self._exchange(reader, writer))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({exchange, stop}, return_when=asyncio.FIRST_COMPLETED)
            exchange.cancel()
            stop.cancel()
            outcome, _ = await asyncio.gather(exchange, stop, return_exceptions=True)
            if isinstance(outcome, Exception) and not isinstance(
                outcome, asyncio.IncompleteReadError | ConnectionError
            ):
                raise outcome
        finally:
            writer.close()
            with suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        pairs = (line.split(":", 1) for line in lines[1:] if line)
        self.seen.append(Seen(target, {k.strip().lower(): v.strip() for k, v in pairs}))
        await self.routes.get(target.split("?")[0], reply(404))(writer)
        await writer.drain()

    async def close(self) -> None:
        assert self._server is not None
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._server.close()
        await self._server.wait_closed()


def head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def reply(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handle(writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, {"Content-Length": str(len(body)), **(headers or {})}) + body)

    return handle


def redirect(location: str, status: int = 302) -> Handler:
    return reply(status, headers={"Location": location})


def in_turn(*handlers: Handler) -> Handler:
    """Answers the n-th request with the n-th handler (the last one repeats)."""
    calls = 0

    async def handle(writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        await handlers[min(calls, len(handlers)) - 1](writer)

    return handle


MakeFetcher = Callable[..., Fetcher]
