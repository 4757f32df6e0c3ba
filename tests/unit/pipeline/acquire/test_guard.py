"""acquire.guard: the SSRF guard, driven through a Fetcher against loopback servers.

No test here may reach any address but loopback: every Fetcher gets `LoopbackOnly` as its network
backend (it refuses anything else) and a table resolver (no real DNS). Blocked cases also assert
that no connection was even attempted.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import httpcore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback_http import (
    HOST,
    LOOPBACK_ONLY,
    LoopbackOnly,
    MakeFetcher,
    TableResolver,
    TinyServer,
    redirect,
    reply,
)

from moderator.errors import AcquireError, ConfigError, FetchBlocked, ModeratorError, Reason
from moderator.pipeline.acquire.addresses import IPAddress, address_problem
from moderator.pipeline.acquire.fetch import Fetched, Fetcher, FetchPolicy
from moderator.pipeline.acquire.guard import SystemResolver, literal_address
from moderator.settings import load_settings

# --- what the guard refuses, before a request and at connect time ------------------------------


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
