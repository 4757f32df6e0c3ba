"""acquire.transport: the fetcher's connection pool against a keep-alive loopback server.

What matters: connections are reused per origin and only per origin, a connection that is not
reused is opened anew through the guard (resolved and checked again), half-read or broken
connections never go back to the pool, and the pool stays within `max_connections` however
fetches end.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from loopback_http import (
    HOST,
    LOOPBACK_ONLY,
    LoopbackOnly,
    MakeFetcher,
    TableResolver,
    TinyServer,
    head,
    in_turn,
)

from moderator.errors import AcquireError, FetchBlocked, TooLarge
from moderator.pipeline.acquire.fetch import FetchPolicy
from moderator.pipeline.acquire.guard import GuardedBackend
from moderator.pipeline.acquire.transport import ConnectionPool


@dataclass
class KeepAliveServer:
    """HTTP/1.1 on 127.0.0.1 that answers any number of requests per connection.

    /close/...  answers with `Connection: close` and closes
    /drop/...   answers normally (keep-alive), then closes the idle connection
    /slow/...   answers after 50 ms
    /hole/...   never answers
    /big/...    a 10 000-byte body
    /chunked/.. the 3-byte body in two chunks; anything else: a 3-byte body with Content-Length
    """

    connections: int = 0  # accepted so far
    open_now: int = 0
    most_open: int = 0
    requests: list[tuple[int, str]] = field(default_factory=list)  # (connection number, path)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        number = self.connections
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                self.requests.append((number, path))
                if path.startswith("/hole"):
                    await reader.read()  # until the client hangs up
                    return
                if path.startswith("/slow"):
                    await asyncio.sleep(0.05)
                if path.startswith("/chunked"):
                    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    writer.write(chunked + b"2\r\nim\r\n1\r\ng\r\n0\r\n\r\n")
                    await writer.drain()
                    continue
                body = b"x" * 10_000 if path.startswith("/big") else b"img"
                closing = path.startswith("/close")
                extra = b"Connection: close\r\n" if closing else b""
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
                )
                await writer.drain()
                if closing or path.startswith("/drop"):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open_now -= 1
            writer.close()
            self._tasks.discard(task)

    async def until(self, condition: Any, what: str) -> None:
        """Wait (up to 2 s) for the server side to see `condition()` become true."""
        for _ in range(200):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"server never saw {what}")

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def keepalive() -> AsyncIterator[KeepAliveServer]:
    srv = KeepAliveServer()
    await srv.start()
    yield srv
    await srv.close()


async def test_one_connection_serves_an_origin_and_only_that_origin(
    keepalive: KeepAliveServer,
    make_fetcher: MakeFetcher,
    backend: LoopbackOnly,
    resolver: TableResolver,
) -> None:
    fetcher = make_fetcher(allow_private=False, allow_networks=LOOPBACK_ONLY)
    for n in range(3):
        got = await fetcher.fetch(keepalive.url(f"/a{n}", host=HOST))
        assert got.data == b"img"
    assert keepalive.connections == 1
    assert resolver.calls == [HOST]  # resolved and checked once, for the one connection
    # Same address and port, another origin: a connection of its own, not HOST's.
    await fetcher.fetch(keepalive.url("/b"))
    assert backend.connects == [("127.0.0.1", keepalive.port)] * 2
    assert [number for number, _ in keepalive.requests] == [1, 1, 1, 2]


async def test_a_chunked_response_read_to_its_end_keeps_the_connection(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher()
    for n in range(2):
        assert (await fetcher.fetch(keepalive.url(f"/chunked/{n}"))).data == b"img"
    assert keepalive.connections == 1


async def test_a_connection_not_reused_is_resolved_and_checked_again(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher, resolver: TableResolver
) -> None:
    fetcher = make_fetcher(allow_private=False, allow_networks=LOOPBACK_ONLY)
    await fetcher.fetch(keepalive.url("/close", host=HOST))  # the server ends the connection
    resolver.table[HOST] = ["10.0.0.5"]  # the name now points somewhere internal
    with pytest.raises(FetchBlocked, match=r"10\.0\.0\.5, which is private"):
        await fetcher.fetch(keepalive.url("/again", host=HOST))
    assert resolver.calls == [HOST, HOST]
    assert keepalive.connections == 1


async def test_an_idle_connection_the_server_closed_is_not_reused(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(retries=0)
    await fetcher.fetch(keepalive.url("/drop"))
    await keepalive.until(lambda: keepalive.open_now == 0, "the connection close")
    await asyncio.sleep(0.01)  # let the FIN reach the client's socket
    got = await fetcher.fetch(keepalive.url("/next"))
    assert (got.data, got.attempts) == (b"img", 1)  # no failed try on the dead connection
    assert keepalive.connections == 2


async def test_a_body_left_unread_closes_its_connection(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(max_bytes=1024)
    with pytest.raises(TooLarge):
        await fetcher.fetch(keepalive.url("/big"))
    await fetcher.fetch(keepalive.url("/small"))
    assert keepalive.connections == 2  # the half-read connection was not handed out again


async def test_open_connections_stay_within_max_connections(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(max_connections=2, timeout_s=5.0)
    got = await asyncio.gather(*(fetcher.fetch(keepalive.url(f"/slow/{n}")) for n in range(8)))
    assert all(g.data == b"img" for g in got)
    assert keepalive.most_open <= 2
    assert keepalive.connections == 2  # each handed on to the next waiting fetch


async def test_a_full_pool_closes_an_idle_connection_to_another_origin(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(max_connections=1)
    await fetcher.fetch(keepalive.url("/first"))
    got = await fetcher.fetch(keepalive.url("/second", host=HOST))
    assert got.data == b"img"
    assert keepalive.connections == 2
    await keepalive.until(lambda: keepalive.open_now == 1, "the idle connection closed")


async def test_a_timed_out_fetch_gives_its_slot_back(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(max_connections=1, timeout_s=0.2, retries=0)
    with pytest.raises(AcquireError, match="no complete response"):
        await fetcher.fetch(keepalive.url("/hole"))
    got = await fetcher.fetch(keepalive.url("/after"))
    assert got.data == b"img"
    await keepalive.until(lambda: keepalive.open_now == 1, "the timed-out connection closed")


async def test_a_fetch_cancelled_while_waiting_for_a_slot_leaves_no_trace(
    keepalive: KeepAliveServer, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(max_connections=1, timeout_s=0.3, retries=0)
    holder = asyncio.ensure_future(fetcher.fetch(keepalive.url("/hole")))
    await keepalive.until(lambda: keepalive.requests, "the first request")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fetcher.fetch(keepalive.url("/waiting")), 0.05)
    with pytest.raises(AcquireError):
        await holder
    got = await fetcher.fetch(keepalive.url("/after"))
    assert got.data == b"img"
    assert [path for _, path in keepalive.requests] == ["/hole", "/after"]


async def _get(pool: ConnectionPool, url: str) -> bytes:
    parsed = httpx.URL(url)
    assert parsed.port is not None
    origin = (b"http", parsed.raw_host, parsed.port)
    response = await pool.request(origin, parsed.raw_path, [(b"Host", parsed.netloc)], 1.0)
    try:
        return b"".join([chunk async for chunk in response.body()])
    finally:
        await response.aclose()


async def test_idle_connections_expire(
    keepalive: KeepAliveServer, backend: LoopbackOnly, resolver: TableResolver
) -> None:
    policy = FetchPolicy(timeout_s=1.0, retries=0, max_bytes=1024, allow_private=True)
    guarded = GuardedBackend(policy, resolver, backend)
    pool = ConnectionPool(
        guarded, ssl.create_default_context(), max_connections=4, keepalive_expiry_s=0.05
    )
    try:
        assert await _get(pool, keepalive.url("/a")) == b"img"
        assert await _get(pool, keepalive.url("/b", host=HOST)) == b"img"
        assert (pool.open_connections, pool.idle_connections) == (2, 2)
        await asyncio.sleep(0.1)
        # A request after the keep-alive period sweeps both expired connections away, its own
        # origin's included, and opens a fresh one.
        assert await _get(pool, keepalive.url("/c")) == b"img"
        assert (pool.open_connections, pool.idle_connections) == (1, 1)
        assert keepalive.connections == 3
        await keepalive.until(lambda: keepalive.open_now == 1, "the expired connections closed")
    finally:
        await pool.aclose()
    assert pool.open_connections == 0
    await keepalive.until(lambda: keepalive.open_now == 0, "every connection closed")


# --- HTTP/1.1 edges the connection handles itself (one request per connection: TinyServer) ------


def _raw(data: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def handle(writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return handle


async def test_informational_responses_are_skipped(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    server.routes["/x"] = _raw(
        b"HTTP/1.1 100 Continue\r\n\r\n" + head(200, {"Content-Length": "3"}) + b"img"
    )
    assert (await make_fetcher().fetch(server.url("/x"))).data == b"img"


async def test_a_body_ending_with_the_connection_is_read_to_that_end(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    server.routes["/x"] = _raw(head(200, {}) + b"no length given")  # head() says Connection: close
    assert (await make_fetcher().fetch(server.url("/x"))).data == b"no length given"


async def test_a_truncated_body_is_retried(server: TinyServer, make_fetcher: MakeFetcher) -> None:
    server.routes["/x"] = in_turn(
        _raw(head(200, {"Content-Length": "10"}) + b"abc"),
        _raw(head(200, {"Content-Length": "3"}) + b"img"),
    )
    got = await make_fetcher().fetch(server.url("/x"))
    assert (got.data, got.attempts) == (b"img", 2)


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP at all
        b"",  # hangs up without a word
        b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 200_000 + b"\r\n\r\n",  # headers over 100 KiB
    ],
    ids=["not-http", "silent-close", "huge-headers"],
)
async def test_broken_responses_are_transient_failures(
    server: TinyServer, make_fetcher: MakeFetcher, answer: bytes
) -> None:
    server.routes["/x"] = _raw(answer)
    with pytest.raises(AcquireError, match="RemoteProtocolError") as caught:
        await make_fetcher(retries=1).fetch(server.url("/x"))
    assert caught.value.attempts == 2
