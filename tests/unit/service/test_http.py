import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from moderator.service.http import HealthServer
from moderator.service.metrics import Metrics


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_probes_and_metrics() -> None:
    metrics = Metrics()
    metrics.dlq.labels("decode_error").inc()
    state = {"ready": False}
    server = HealthServer(
        metrics, lambda: (state["ready"], [] if state["ready"] else ["policy not compiled"])
    )
    await server.start("127.0.0.1", 0)
    try:
        assert await _get(server.port, "/healthz") == (200, "ok\n")
        status, body = await _get(server.port, "/readyz")
        assert (status, body) == (503, "not ready: policy not compiled\n")
        state["ready"] = True
        assert await _get(server.port, "/readyz") == (200, "ready\n")
        status, body = await _get(server.port, "/metrics")
        assert status == 200
        assert 'moderator_dlq_records_total{reason="decode_error"} 1.0' in body
        assert "moderator_ready 1.0" in body
        assert (await _get(server.port, "/nope"))[0] == 404
    finally:
        await server.stop()


async def test_liveness_failure_is_503() -> None:
    server = HealthServer(Metrics(), lambda: (True, []), lambda: (False, "consumer stuck"))
    await server.start("127.0.0.1", 0)
    try:
        assert await _get(server.port, "/healthz") == (503, "consumer stuck\n")
    finally:
        await server.stop()


# --- bounded connections: real sockets against the server on 127.0.0.1 ----------------------------


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing; a reset after its answer counts as the close."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


@pytest.fixture
async def bounded() -> AsyncIterator[HealthServer]:
    server = HealthServer(
        Metrics(),
        lambda: (True, []),
        max_connections=3,
        head_deadline_s=0.5,
        max_head_bytes=4096,
        max_headers=10,
    )
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_trickled_headers_are_cut_at_the_total_deadline(bounded: HealthServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        with contextlib.suppress(ConnectionError):
            while True:  # one short header line every 50 ms: each well within any read timeout
                await asyncio.sleep(0.05)
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                sent += 1

    started = time.monotonic()
    task = asyncio.create_task(trickle())
    try:
        data = await asyncio.wait_for(_read_all(reader), 5)
    finally:
        task.cancel()
        writer.close()
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 2.0
    assert sent >= 5  # it was still sending when it was cut
    assert data == b"" or data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert bounded.open_connections == 0


async def test_a_silent_client_is_answered_408_at_the_deadline(bounded: HealthServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
    started = time.monotonic()
    data = await asyncio.wait_for(_read_all(reader), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert 0.45 <= time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 11 + b"\r\n",  # over 10 headers
        b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",  # one line over 4 KiB
        b"GET /healthz HTTP/1.1\r\n" + (b"X-Sum: " + b"a" * 900 + b"\r\n") * 5 + b"\r\n",
    ],
)
async def test_heads_over_the_size_or_count_cap_are_refused(
    bounded: HealthServer, head: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
    writer.write(head)
    await writer.drain()
    data = await asyncio.wait_for(_read_all(reader), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert (await _get(bounded.port, "/healthz")) == (200, "ok\n")


async def test_connections_over_the_cap_get_503_without_being_read(bounded: HealthServer) -> None:
    held = [await asyncio.open_connection("127.0.0.1", bounded.port) for _ in range(3)]
    for _, writer in held:
        writer.write(b"GET /heal")  # a request that never finishes
        await writer.drain()
    for _ in range(100):
        if bounded.open_connections == 3:
            break
        await asyncio.sleep(0.01)
    assert bounded.open_connections == 3

    reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
    data = await asyncio.wait_for(_read_all(reader), 2)  # nothing sent: answered anyway
    writer.close()
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert data.endswith(b"too many connections\n")

    for _, held_writer in held:
        held_writer.close()
    for _ in range(100):
        if bounded.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert await _get(bounded.port, "/healthz") == (200, "ok\n")
    status, body = await _get(bounded.port, "/metrics")
    assert status == 200
    assert "moderator_ready 1.0" in body


async def test_head_request_gets_headers_only(bounded: HealthServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
    writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(_read_all(reader), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3\r\n" in data
    assert data.endswith(b"\r\n\r\n")
