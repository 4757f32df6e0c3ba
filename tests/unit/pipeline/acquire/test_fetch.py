"""acquire.fetch: fetching image URLs against real loopback servers — redirects, size limits,
retries, deadlines, TLS, and the fetcher's lifecycle.

No test here may reach any address but loopback: every Fetcher gets `LoopbackOnly` as its network
backend (it refuses anything else) and a table resolver (no real DNS); see conftest.py.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
    redirect,
    reply,
)

from moderator.errors import AcquireError, Reason, TooLarge
from moderator.pipeline.acquire.fetch import Fetcher, FetchPolicy, redact
from moderator.settings import PipelineSettings

# --- fetching -------------------------------------------------------------------------------------


async def test_fetch_returns_body_and_metadata(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    server.routes["/cat.jpg"] = reply(200, b"\xff\xd8jpeg", {"Content-Type": "image/jpeg"})
    got = await make_fetcher().fetch(server.url("/cat.jpg?size=2"))
    assert got.data == b"\xff\xd8jpeg"
    assert got.attempts == 1
    assert got.content_type == "image/jpeg"
    assert got.final_url == server.url("/cat.jpg?size=2")
    assert server.seen[0].headers["accept-encoding"] == "identity"


async def test_redirects_are_followed(server: TinyServer, make_fetcher: MakeFetcher) -> None:
    server.routes["/a"] = redirect("/b")
    server.routes["/b"] = redirect(server.url("/c", host=HOST), status=301)
    server.routes["/c"] = reply(200, b"final")
    got = await make_fetcher().fetch(server.url("/a"))
    assert got.data == b"final"
    assert got.final_url == server.url("/c", host=HOST)
    assert [s.target for s in server.seen] == ["/a", "/b", "/c"]


async def test_redirect_loops_stop(server: TinyServer, make_fetcher: MakeFetcher) -> None:
    server.routes["/loop"] = redirect("/loop")
    with pytest.raises(AcquireError, match="more than 3 redirects") as caught:
        await make_fetcher(max_redirects=3).fetch(server.url("/loop"))
    assert type(caught.value) is AcquireError
    assert caught.value.attempts == 1  # not transient: not retried
    assert len(server.seen) == 4


# --- size limits ----------------------------------------------------------------------------------


async def test_body_of_exactly_max_bytes_is_accepted(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    server.routes["/x"] = reply(200, b"a" * 1024)
    assert len((await make_fetcher(max_bytes=1024).fetch(server.url("/x"))).data) == 1024


async def test_declared_length_over_limit_is_refused_before_reading(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    async def huge_promise(writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, {"Content-Length": str(10**9)}) + b"a" * 100)
        await writer.drain()
        await asyncio.sleep(5)  # the body never comes; the client must not wait for it

    server.routes["/big"] = huge_promise
    with pytest.raises(TooLarge, match="Content-Length 1000000000") as caught:
        await make_fetcher(max_bytes=1024).fetch(server.url("/big"))
    assert caught.value.reason is Reason.TOO_LARGE
    assert caught.value.attempts == 1


async def test_chunked_body_over_limit_stops_reading(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    sent = 0
    total = 64 * 1024 * 1024

    async def endless_chunks(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(head(200, {"Transfer-Encoding": "chunked"}))
        piece = b"z" * 16384
        while sent < total:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    server.routes["/stream"] = endless_chunks
    with pytest.raises(TooLarge, match="over 100000 bytes") as caught:
        await make_fetcher(max_bytes=100_000).fetch(server.url("/stream"))
    assert caught.value.attempts == 1
    assert sent < total // 4  # the client hung up long before the end


async def test_compressed_body_is_refused(server: TinyServer, make_fetcher: MakeFetcher) -> None:
    server.routes["/gz"] = reply(200, b"\x1f\x8b...", {"Content-Encoding": "gzip"})
    with pytest.raises(AcquireError, match="Content-Encoding gzip"):
        await make_fetcher().fetch(server.url("/gz"))


# --- retries and deadlines ------------------------------------------------------------------------


@pytest.mark.parametrize("first", [500, 503, 429])
async def test_transient_status_is_retried(
    server: TinyServer, make_fetcher: MakeFetcher, first: int
) -> None:
    server.routes["/x"] = in_turn(reply(first), reply(200, b"ok"))
    got = await make_fetcher().fetch(server.url("/x"))
    assert (got.data, got.attempts) == (b"ok", 2)


async def test_persistent_5xx_gives_up_after_the_retries(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    server.routes["/x"] = reply(502)
    with pytest.raises(AcquireError, match="HTTP 502 Bad Gateway; gave up after 3") as caught:
        await make_fetcher(retries=2).fetch(server.url("/x?token=secret"))
    assert type(caught.value) is AcquireError
    assert caught.value.attempts == 3
    assert len(server.seen) == 3
    assert "secret" not in str(caught.value)
    assert server.url("/x") + "?…" in str(caught.value)


@pytest.mark.parametrize("status", [404, 403, 410])
async def test_client_errors_are_not_retried(
    server: TinyServer, make_fetcher: MakeFetcher, status: int
) -> None:
    server.routes["/x"] = reply(status)
    with pytest.raises(AcquireError, match=f"HTTP {status}") as caught:
        await make_fetcher().fetch(server.url("/x"))
    assert caught.value.reason is Reason.FETCH_FAILED
    assert caught.value.attempts == 1
    assert len(server.seen) == 1


async def test_refused_connection_is_retried(
    make_fetcher: MakeFetcher, backend: LoopbackOnly
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AcquireError, match="ConnectError") as caught:
        await make_fetcher(retries=1).fetch(f"http://127.0.0.1:{port}/x")
    assert caught.value.attempts == 2
    assert backend.connects == [("127.0.0.1", port)] * 2


async def test_unknown_host_is_not_retried(
    make_fetcher: MakeFetcher, resolver: TableResolver
) -> None:
    with pytest.raises(AcquireError, match="does not exist") as caught:
        await make_fetcher().fetch("http://nowhere.example.test/x")
    assert caught.value.attempts == 1
    assert resolver.calls == ["nowhere.example.test"]


async def test_slowloris_is_cut_off_by_the_deadline(
    server: TinyServer, make_fetcher: MakeFetcher
) -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, {"Content-Length": "1000"}))
        for _ in range(1000):  # one byte every 50 ms: each read is quick, the body takes 50 s
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    server.routes["/slow"] = trickle
    fetcher = make_fetcher(timeout_s=0.3, retries=1)
    started = time.monotonic()
    with pytest.raises(
        AcquireError, match=r"no complete response within 0\.3s|fetch deadline"
    ) as caught:
        await fetcher.fetch(server.url("/slow"))
    elapsed = time.monotonic() - started
    assert caught.value.attempts == 2
    assert elapsed < 10 * 0.3  # sanity bound only; the budget is about 0.6 s


def test_deadline_covers_attempts_and_backoff() -> None:
    policy = FetchPolicy(timeout_s=2, retries=3, max_bytes=1, backoff_s=0.5, max_backoff_s=1.5)
    assert policy.deadline_s == pytest.approx(2 * 4 + 0.5 + 1.0 + 1.5 + 0.1)
    assert all(0.25 <= policy.backoff(1) <= 0.5 for _ in range(50))
    assert all(0.75 <= policy.backoff(3) <= 1.5 for _ in range(50))


# --- TLS: SNI and verification use the hostname while the socket goes to the checked IP ----------


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("certs")
    for name in (HOST, "other.example.test"):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.pem"),
                "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return folder


@pytest.fixture
async def tls_server(certs: Path) -> AsyncIterator[tuple[TinyServer, list[str | None]]]:
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / f"{HOST}.pem", certs / f"{HOST}.key")

    def on_sni(_sock: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = on_sni
    srv = TinyServer(ssl_context=context)
    await srv.start()
    yield srv, names
    await srv.close()


async def test_tls_uses_the_hostname_for_sni_and_verification(
    tls_server: tuple[TinyServer, list[str | None]],
    certs: Path,
    make_fetcher: MakeFetcher,
    backend: LoopbackOnly,
) -> None:
    server, sni_names = tls_server
    server.routes["/cat.jpg"] = reply(200, b"secure")
    trust = ssl.create_default_context(cafile=str(certs / f"{HOST}.pem"))
    fetcher = make_fetcher(ssl_context=trust, allow_private=False, allow_networks=LOOPBACK_ONLY)
    got = await fetcher.fetch(server.url("/cat.jpg", host=HOST))
    assert got.data == b"secure"
    assert backend.connects == [("127.0.0.1", server.port)]
    assert sni_names == [HOST]


async def test_tls_certificate_for_another_name_fails_without_retry(
    tls_server: tuple[TinyServer, list[str | None]],
    certs: Path,
    make_fetcher: MakeFetcher,
    resolver: TableResolver,
) -> None:
    server, _ = tls_server
    resolver.table["other.example.test"] = ["127.0.0.1"]
    trust = ssl.create_default_context(cafile=str(certs / f"{HOST}.pem"))
    with pytest.raises(AcquireError, match="TLS certificate rejected") as caught:
        await make_fetcher(ssl_context=trust).fetch(server.url("/", host="other.example.test"))
    assert caught.value.attempts == 1


# --- lifecycle and small pieces -------------------------------------------------------------------


async def test_closed_fetcher_refuses_work(make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher()
    await fetcher.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await fetcher.fetch("http://127.0.0.1:9/x")


async def test_context_manager_closes(server: TinyServer, resolver: TableResolver) -> None:
    server.routes["/x"] = reply(200, b"ok")
    policy = FetchPolicy(timeout_s=0.5, retries=0, max_bytes=10, allow_private=True)
    async with Fetcher(policy, resolver=resolver, network_backend=LoopbackOnly()) as fetcher:
        assert (await fetcher.fetch(server.url("/x"))).data == b"ok"
    with pytest.raises(RuntimeError):
        await fetcher.fetch(server.url("/x"))


async def test_cookies_are_not_kept(server: TinyServer, make_fetcher: MakeFetcher) -> None:
    server.routes["/set"] = reply(200, b"a", {"Set-Cookie": "session=abc; Path=/"})
    server.routes["/next"] = reply(200, b"b")
    fetcher = make_fetcher()
    await fetcher.fetch(server.url("/set", host=HOST))
    await fetcher.fetch(server.url("/next", host=HOST))
    assert "cookie" not in server.seen[1].headers


def test_policy_from_settings() -> None:
    settings = PipelineSettings(
        fetch_timeout_s=3.0,
        fetch_retries=4,
        max_image_bytes=5000,
        fetch_allowed_hosts=["CDN.example.com"],
        fetch_allow_private=True,
    )
    policy = FetchPolicy.from_settings(settings)
    assert (policy.timeout_s, policy.retries, policy.max_bytes) == (3.0, 4, 5000)
    assert policy.allowed_hosts == frozenset({"cdn.example.com"})
    assert policy.allow_private


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.test:8443/a/b.jpg?sig=x#f", "https://h.test:8443/a/b.jpg?…"),
        ("http://[::1]/x", "http://[::1]/x"),
        ("data:image/png;base64,AAAA", "data:…"),
        ("http://u:p@h.test:abc/x?q", "http://h.test:abc/x"),  # unparsable: fallback
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_redact_truncates() -> None:
    shown = redact("http://h.test/" + "a" * 500)
    assert len(shown) == 200
    assert shown.endswith("…")
