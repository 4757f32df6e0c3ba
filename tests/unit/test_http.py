import asyncio

from moderator.http import HealthServer
from moderator.metrics import Metrics


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
