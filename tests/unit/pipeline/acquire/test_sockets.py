"""acquire.sockets: the fetcher's network backend on asyncio transports, against loopback.

The fetch and guard tests already run every fetch over it (see conftest.py); these pin down the
stream itself: reads return what arrived, bounded, flow control holds, and each failure is the
httpcore error the connection code expects.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpcore
import pytest

from moderator.pipeline.acquire.sockets import AsyncioBackend

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Serve], Awaitable[int]]]:
    """Starts a loopback server running the given handler per connection; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(handler: Serve) -> int:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _read_all(stream: httpcore.AsyncNetworkStream, max_bytes: int) -> list[bytes]:
    reads = []
    while chunk := await stream.read(max_bytes, timeout=2.0):
        reads.append(chunk)
    return reads


async def test_reads_return_what_arrived_within_max_bytes(
    serve: Callable[[Serve], Awaitable[int]],
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    stream = await AsyncioBackend().connect_tcp("127.0.0.1", await serve(send))
    try:
        reads = await _read_all(stream, 100_000)
    finally:
        await stream.aclose()
    assert b"".join(reads) == payload
    assert max(len(r) for r in reads) <= 100_000


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing(
    serve: Callable[[Serve], Awaitable[int]],
) -> None:
    payload = b"0123456789abcdef" * (4 * 1024 * 1024 // 16)  # 4 MiB, well over the pause mark

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    stream = await AsyncioBackend().connect_tcp("127.0.0.1", await serve(send))
    try:
        await asyncio.sleep(0.3)  # let the server fill our buffer
        assert stream._protocol.reading_paused  # type: ignore[attr-defined]
        assert stream._protocol.buffered < len(payload)  # type: ignore[attr-defined]
        reads = await _read_all(stream, 256 * 1024)
    finally:
        await stream.aclose()
    assert b"".join(reads) == payload


async def test_an_idle_connection_is_readable_once_the_server_closes_it(
    serve: Callable[[Serve], Awaitable[int]],
) -> None:
    closing = asyncio.Event()

    async def close_when_told(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await closing.wait()

    stream = await AsyncioBackend().connect_tcp("127.0.0.1", await serve(close_when_told))
    try:
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("server_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object") is None
        closing.set()
        for _ in range(100):
            if stream.get_extra_info("is_readable"):
                break
            await asyncio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is True
        assert await stream.read(1024) == b""  # a clean close reads as the end
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"GET / HTTP/1.1\r\n\r\n")
    finally:
        await stream.aclose()


async def test_a_reset_connection_is_a_read_error(
    serve: Callable[[Serve], Awaitable[int]],
) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # close with linger 0: an RST

    stream = await AsyncioBackend().connect_tcp("127.0.0.1", await serve(reset))
    try:
        await stream.write(b"ping")
        with pytest.raises(httpcore.ReadError):
            await stream.read(1024, timeout=2.0)
    finally:
        await stream.aclose()


async def test_silence_is_a_read_timeout(serve: Callable[[Serve], Awaitable[int]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    stream = await AsyncioBackend().connect_tcp("127.0.0.1", await serve(silent))
    try:
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(1024, timeout=0.05)
    finally:
        await stream.aclose()


async def test_a_tls_handshake_nobody_answers_is_a_connect_timeout(
    serve: Callable[[Serve], Awaitable[int]],
) -> None:
    import ssl

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    stream = await AsyncioBackend().connect_tcp("127.0.0.1", await serve(silent))
    with pytest.raises(httpcore.ConnectTimeout):
        await stream.start_tls(ssl.create_default_context(), "example.test", timeout=0.05)


async def test_connect_failures_are_httpcore_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp("127.0.0.1", port)
    with pytest.raises(httpcore.ConnectError, match="not supported"):
        await AsyncioBackend().connect_tcp("127.0.0.1", port, local_address="127.0.0.1")

    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never)
    with pytest.raises(httpcore.ConnectTimeout):
        await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=0.05)
