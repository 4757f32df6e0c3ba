"""acquire: fetching image URLs against real loopback servers, and the SSRF guard.

No test here may reach any address but loopback: every Fetcher gets `LoopbackOnly` as its network
backend (it refuses anything else) and a table resolver (no real DNS). Blocked cases also assert
that no connection was even attempted.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import httpcore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moderator.errors import (
    AcquireError,
    ConfigError,
    FetchBlocked,
    ModeratorError,
    Reason,
    TooLarge,
)
from moderator.pipeline.acquire.addresses import address_problem
from moderator.pipeline.acquire.fetch import (
    Fetched,
    Fetcher,
    FetchPolicy,
    IPAddress,
    SystemResolver,
    literal_address,
    redact,
)
from moderator.settings import PipelineSettings, load_settings

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


@pytest.fixture
async def server() -> AsyncIterator[TinyServer]:
    srv = TinyServer()
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
def backend() -> LoopbackOnly:
    return LoopbackOnly()


@pytest.fixture
def resolver() -> TableResolver:
    return TableResolver(
        {
            HOST: ["127.0.0.1"],
            "private.example.test": ["192.168.1.10"],
            "internal.example.test": ["10.0.0.5"],
            "mixed.example.test": ["8.8.8.8", "192.168.1.10"],
        }
    )


MakeFetcher = Callable[..., Fetcher]


@pytest.fixture
async def make_fetcher(
    backend: LoopbackOnly, resolver: TableResolver
) -> AsyncIterator[MakeFetcher]:
    made: list[Fetcher] = []

    def make(ssl_context: ssl.SSLContext | None = None, **overrides: Any) -> Fetcher:
        options: dict[str, Any] = {
            "timeout_s": 0.5,
            "retries": 2,
            "max_bytes": 1024,
            "allow_private": True,
            "backoff_s": 0.01,
        }
        options.update(overrides)
        fetcher = Fetcher(
            FetchPolicy(**options),
            resolver=resolver,
            network_backend=backend,
            ssl_context=ssl_context,
        )
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.aclose()


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


async def test_connects_to_the_checked_address_with_the_original_host(
    server: TinyServer, make_fetcher: MakeFetcher, backend: LoopbackOnly, resolver: TableResolver
) -> None:
    server.routes["/cat.jpg"] = reply(200, b"img")
    fetcher = make_fetcher(allow_private=False, allow_networks=LOOPBACK_ONLY)
    got = await fetcher.fetch(server.url("/cat.jpg", host=HOST))
    assert got.data == b"img"
    assert resolver.calls == [HOST]  # resolved once, by the guard
    assert backend.connects == [("127.0.0.1", server.port)]  # connected to the IP it checked
    assert server.seen[0].headers["host"] == f"{HOST}:{server.port}"


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


@pytest.mark.parametrize(
    "location",
    [
        "http://internal.example.test/secret",  # resolves to 10.0.0.5
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:6379/",
        "file:///etc/passwd",
        "http://user:pw@images.example.test/",
    ],
)
async def test_redirect_to_a_private_place_is_blocked_before_connecting(
    server: TinyServer, make_fetcher: MakeFetcher, backend: LoopbackOnly, location: str
) -> None:
    # Only the first hop's address (the loopback test server) is allowed.
    server.routes["/go"] = redirect(location)
    fetcher = make_fetcher(allow_private=False, allow_networks=LOOPBACK_ONLY)
    with pytest.raises(FetchBlocked) as caught:
        await fetcher.fetch(server.url("/go", host=HOST))
    assert backend.connects == [("127.0.0.1", server.port)]
    assert caught.value.reason is Reason.FETCH_BLOCKED
    assert caught.value.attempts == 1
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://images.example.test/_stats",
        "ftp://images.example.test/cat.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://127.0.0.1/",
        "http://127.0.0.1./",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
        "http://2130706433/",  # 127.0.0.1 as a C resolver reads it
        "http://0x7f.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://localhost/",
        "http://LOCALHOST./",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://private.example.test/",  # resolves to 192.168.1.10
        "http://mixed.example.test/",  # one public, one private address: refused outright
        "https://user:pw@images.example.test/cat.jpg",
    ],
)
async def test_blocked_urls_are_refused_without_connecting(
    make_fetcher: MakeFetcher, backend: LoopbackOnly, url: str
) -> None:
    with pytest.raises(FetchBlocked) as caught:
        await make_fetcher(allow_private=False).fetch(url)
    assert backend.connects == []
    assert caught.value.attempts == 1
    assert caught.value.reason is Reason.FETCH_BLOCKED
    assert "pw" not in str(caught.value)


async def test_hostname_resolving_private_is_blocked_after_one_lookup(
    make_fetcher: MakeFetcher, backend: LoopbackOnly, resolver: TableResolver
) -> None:
    with pytest.raises(FetchBlocked, match=r"192\.168\.1\.10, which is private"):
        await make_fetcher(allow_private=False).fetch("http://private.example.test/cat.jpg")
    assert resolver.calls == ["private.example.test"]
    assert backend.connects == []


async def test_allowlist(server: TinyServer, make_fetcher: MakeFetcher) -> None:
    server.routes["/cat.jpg"] = reply(200, b"img")
    server.routes["/away"] = redirect(server.url("/cat.jpg"))
    fetcher = make_fetcher(allowed_hosts=frozenset({"Images.Example.Test."}))
    assert (await fetcher.fetch(server.url("/cat.jpg", host=HOST))).data == b"img"
    with pytest.raises(FetchBlocked, match="not in the fetch allowlist"):
        await fetcher.fetch(server.url("/cat.jpg"))  # 127.0.0.1, though private is allowed
    with pytest.raises(FetchBlocked, match="not in the fetch allowlist"):
        await fetcher.fetch(server.url("/away", host=HOST))  # a redirect out of the list
    assert [s.target for s in server.seen] == ["/cat.jpg", "/away"]


def test_allowlist_wildcards_match_subdomains_only() -> None:
    policy = FetchPolicy(
        timeout_s=1, retries=0, max_bytes=1, allowed_hosts=frozenset({"*.cdn.test"})
    )
    assert policy.host_allowed("a.cdn.test")
    assert policy.host_allowed("x.y.cdn.test")
    assert not policy.host_allowed("cdn.test")
    assert not policy.host_allowed("evilcdn.test")


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


def test_allowed_networks_from_settings_exempt_only_themselves() -> None:
    settings = load_settings(
        environ={"MODERATOR_PIPELINE__FETCH_ALLOW_NETWORKS": '["10.20.0.0/16", "fd00:1::/32"]'}
    )
    policy = FetchPolicy.from_settings(settings.pipeline)
    assert policy.address_problem(ip_address("10.20.3.4")) is None
    assert policy.address_problem(ip_address("fd00:1::5")) is None
    assert policy.address_problem(ip_address("10.21.0.1")) is not None  # next door: still private
    assert policy.address_problem(ip_address("127.0.0.1")) is not None


def test_allowed_network_with_host_bits_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"10\.20\.0\.1/16 has host bits set"):
        load_settings(environ={"MODERATOR_PIPELINE__FETCH_ALLOW_NETWORKS": '["10.20.0.1/16"]'})


@pytest.mark.parametrize("network", ["0.0.0.0/0", "128.0.0.0/1", "::/0", "fd00::/8"])
def test_allowed_network_too_broad_to_exempt(network: str) -> None:
    with pytest.raises(ConfigError, match="too broad to exempt"):
        load_settings(environ={"MODERATOR_PIPELINE__FETCH_ALLOW_NETWORKS": f'["{network}"]'})


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", IPv4Address("127.0.0.1")),
        ("2130706433", IPv4Address("127.0.0.1")),
        ("0x7f.1", IPv4Address("127.0.0.1")),
        ("127.1", IPv4Address("127.0.0.1")),
        ("::1", IPv6Address("::1")),
        (HOST, None),
        ("cafe.be", None),
    ],
)
def test_literal_address(host: str, expected: IPAddress | None) -> None:
    assert literal_address(host) == expected


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


async def test_system_resolver_tries_each_checked_address(server: TinyServer) -> None:
    # `localhost` comes from /etc/hosts (no DNS traffic); when it lists ::1 first, the IPv4-only
    # server refuses it and the next checked address is tried.
    server.routes["/x"] = reply(200, b"ok")
    backend = LoopbackOnly()
    policy = FetchPolicy(timeout_s=0.5, retries=0, max_bytes=10, allow_private=True)
    async with Fetcher(policy, network_backend=backend) as fetcher:
        got = await fetcher.fetch(server.url("/x", host="localhost"))
    assert got.data == b"ok"
    assert backend.connects[-1] == ("127.0.0.1", server.port)
    assert server.seen[0].headers["host"] == f"localhost:{server.port}"


# --- special-purpose ranges in messages, and host names no resolver accepts ---------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://192.0.0.9/", "Port Control Protocol anycast (192.0.0.9/32, RFC 7723)"),
        ("http://192.0.0.1/", "IPv4 service continuity prefix (192.0.0.0/29, RFC 7335)"),
        ("http://198.51.100.7/", "documentation (TEST-NET-2) (198.51.100.0/24, RFC 5737)"),
        ("http://[2001:db8::1]/", "documentation (2001:db8::/32, RFC 3849)"),
        ("http://[::ffff:10.0.0.1]/", "form of 10.0.0.1, which is private-use (10.0.0.0/8"),
        ("http://[2002:a9fe:a9fe::1]/", "form of 169.254.169.254, which is link-local"),
        ("http://internal.example.test/", "10.0.0.5, which is private-use (10.0.0.0/8, RFC 1918)"),
    ],
)
async def test_refusals_name_the_special_purpose_range(
    make_fetcher: MakeFetcher, backend: LoopbackOnly, url: str, reason: str
) -> None:
    with pytest.raises(FetchBlocked) as caught:
        await make_fetcher(allow_private=False).fetch(url)
    assert reason in str(caught.value)
    assert backend.connects == []


def test_allow_private_and_allowed_networks_still_exempt_special_ranges() -> None:
    everything = FetchPolicy(timeout_s=1, retries=0, max_bytes=1, allow_private=True)
    store = FetchPolicy(
        timeout_s=1, retries=0, max_bytes=1, allow_networks=frozenset({ip_network("192.0.0.0/24")})
    )
    for address in ("192.0.0.9", "10.0.0.1", "fd00::1", "::1"):
        assert everything.address_problem(ip_address(address)) is None
    assert store.address_problem(ip_address("192.0.0.9")) is None
    assert store.address_problem(ip_address("192.0.2.1")) is not None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://" + "a" * 64 + ".example.test/x.jpg", "a label of 64 characters, over 63"),
        ("http://" + ".".join(["a" * 63] * 4) + "/x.jpg", "255 characters long, over 253"),
        ("http://a..b.test/x.jpg", "an empty label"),
        ("http://a%00b.test/x.jpg", "character '%' is not allowed"),
        ("http://a%20b.test/", "character '%' is not allowed"),
        ("http://images.example.test:99999/x.jpg", "port 99999 is outside 1-65535"),
        ("http://images.example.test:0/x.jpg", "port 0 is outside 1-65535"),
        ("http://xn--a.test/", "invalid host name"),
        ("http://\ud800.test/", "invalid URL"),
        ("http://images.example.test/\ud800", "invalid URL"),
        ("http://a\x00b.test/", "invalid URL"),
    ],
)
async def test_hosts_no_resolver_accepts_fail_at_once(
    make_fetcher: MakeFetcher,
    backend: LoopbackOnly,
    resolver: TableResolver,
    url: str,
    problem: str,
) -> None:
    with pytest.raises(AcquireError) as caught:
        await make_fetcher().fetch(url)
    assert type(caught.value) is AcquireError
    assert caught.value.reason is Reason.FETCH_FAILED
    assert caught.value.attempts == 1
    assert problem in str(caught.value)
    assert resolver.calls == []
    assert backend.connects == []
    str(caught.value).encode("utf-8")  # fit for a DLQ header: no lone surrogates


class RaisingResolver:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls += 1
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "attempts", "shown"),
    [
        (UnicodeError("label empty or too long"), 1, "invalid host name"),
        (ValueError("embedded null character"), 1, "invalid host name"),
        (OverflowError("Python int too large to convert to C long"), 1, "invalid host name"),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), 2, "cannot resolve"),
        (OSError(24, "Too many open files"), 2, "cannot resolve"),
    ],
)
async def test_every_resolver_error_becomes_an_acquire_error(
    backend: LoopbackOnly, exc: Exception, attempts: int, shown: str
) -> None:
    resolver = RaisingResolver(exc)
    policy = FetchPolicy(timeout_s=0.5, retries=1, max_bytes=10, backoff_s=0.01)
    async with Fetcher(policy, resolver=resolver, network_backend=backend) as fetcher:
        with pytest.raises(AcquireError) as caught:
            await fetcher.fetch(f"http://{HOST}/x.jpg")
    assert type(caught.value) is AcquireError
    assert caught.value.attempts == attempts == resolver.calls
    assert shown in str(caught.value)
    assert backend.connects == []


@pytest.mark.parametrize("host", ["a" * 64 + ".test", "a..b.test", ".a.test", "\ud800.test"])
async def test_system_resolver_rejects_these_names_before_any_lookup(host: str) -> None:
    # The idna codec refuses them inside Python, before C's getaddrinfo sends anything.
    with pytest.raises(UnicodeError):
        await SystemResolver().resolve(host, 80)


# --- fuzz: any URL text, any redirect target, ends as a ModeratorError --------------------------


class CannedStream(httpcore.AsyncNetworkStream):
    """A connection that never leaves the process: answers /start with a redirect, else 200."""

    def __init__(self, location: str) -> None:
        self._location = location
        self._request = b""
        self._reply: bytes | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self._request += buffer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._reply is None:
            target = self._request.split(b" ", 2)[1] if b" " in self._request else b""
            if target.startswith(b"/start"):
                head = f"HTTP/1.1 302 Found\r\nLocation: {self._location}\r\n".encode("latin-1")
            else:
                head = b"HTTP/1.1 200 OK\r\n"
            self._reply = head + b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
            return self._reply
        return b""

    async def aclose(self) -> None:
        pass

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        return self  # https URLs are answered in plain text: only the URL handling is under test

    def get_extra_info(self, info: str) -> Any:
        return None


class CannedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.location = "/"
        self.connects: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        ip_address(host)  # only checked addresses may arrive here
        self.connects.append(host)
        return CannedStream(self.location)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class CodecResolver:
    """Applies the `idna` codec as socket.getaddrinfo does, then answers from a hash of the name."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        host.encode("idna")
        if "\x00" in host:
            raise ValueError("embedded null character")
        answers = (["93.184.215.14"], ["10.0.0.1"], ["2606:4700::1", "127.0.0.1"], [])
        choice = answers[sum(host.encode("utf-8", "surrogatepass")) % 5 % 4] if host else []
        if not choice:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(a) for a in choice]


_HOSTILE_CHARS = st.sampled_from(
    [*"aZ09.-_:/@[]%?#\\ \t\x00\x7f\u00df\u0660\u200d\ud800\uff0e\uffff", "xn--", "%25"]
)
_HOSTILE_TEXT = st.lists(_HOSTILE_CHARS, max_size=30).map("".join)
_LABELS = st.lists(st.text("ab-_", min_size=0, max_size=70), min_size=1, max_size=6).map(".".join)
HOSTILE_URLS = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda scheme, host, port, rest: f"{scheme}{host}{port}{rest}",
        st.sampled_from(["http://", "https://", "HTTP://", "http:", "//", "ftp://", ""]),
        st.one_of(_HOSTILE_TEXT, _LABELS, st.builds("[{}]".format, _HOSTILE_TEXT)),
        st.one_of(
            st.just(""),
            st.integers(-5, 10**6).map(":{}".format),
            _HOSTILE_TEXT.map(lambda t: ":" + t),
        ),
        st.one_of(st.just("/start"), _HOSTILE_TEXT, st.text(max_size=20)),
    ),
)
LOCATIONS = st.one_of(
    st.text(
        st.characters(min_codepoint=1, max_codepoint=255, blacklist_characters="\r\n"), max_size=40
    ),
    HOSTILE_URLS.map(
        lambda u: (
            u.encode("latin-1", "replace").decode("latin-1").replace("\r", "").replace("\n", "")
        )
    ),
)


async def _outcome(fetcher: Fetcher, url: str) -> Fetched | ModeratorError:
    try:
        return await fetcher.fetch(url)
    except ModeratorError as exc:
        return exc


@pytest.fixture
def fuzz_fetcher() -> Iterator[tuple[asyncio.Runner, Fetcher, CannedBackend]]:
    backend = CannedBackend()
    policy = FetchPolicy(timeout_s=0.5, retries=1, max_bytes=100, backoff_s=0.001)
    fetcher = Fetcher(
        policy,
        resolver=CodecResolver(),
        network_backend=backend,
        ssl_context=ssl.create_default_context(),
    )
    with asyncio.Runner() as runner:
        yield runner, fetcher, backend
        runner.run(fetcher.aclose())


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(url=HOSTILE_URLS, location=LOCATIONS)
def test_any_url_text_ends_as_a_fetch_or_a_moderator_error(
    fuzz_fetcher: tuple[asyncio.Runner, Fetcher, CannedBackend], url: str, location: str
) -> None:
    runner, fetcher, backend = fuzz_fetcher
    backend.location = location
    outcome = runner.run(_outcome(fetcher, url))  # anything but a ModeratorError propagates
    if isinstance(outcome, ModeratorError):
        assert outcome.reason in (Reason.FETCH_FAILED, Reason.FETCH_BLOCKED, Reason.TOO_LARGE)
        str(outcome).encode("utf-8")  # DLQ headers and logs must encode it
    else:
        assert outcome.data == b"ok"
    for host in backend.connects:
        assert address_problem(ip_address(host)) is None  # only public addresses were reached
