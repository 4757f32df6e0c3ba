"""Fetch an event's image bytes from an http(s) URL without becoming an SSRF proxy.

Events name images by URL, and whoever writes events chooses the URL, so a naive fetch would let
them make this service call cloud metadata endpoints, Redis on localhost or any internal
service. The guard works in two places:

* Before every request — the first URL and each redirect hop, which are followed here by hand
  (at most `max_redirects`) so no hop goes unchecked — the URL itself is checked: http/https
  only, no credentials, host in the allowlist when one is set, no internal names (`localhost`,
  `*.internal`, metadata hosts), and a literal address, including the `2130706433` or `0x7f.1`
  spellings C resolvers accept, must lie outside the special-purpose ranges that
  `moderator.pipeline.acquire.addresses` writes out (not Python's `ipaddress` tables, which
  change between releases). A host name no resolver accepts (an empty or over-long label, a
  character other than letters, digits, `-` and `_`) or a port outside 1-65535 is refused
  there too, as `fetch_failed` without a retry: it is a broken URL, not an attack.
* At connect time, inside `GuardedBackend`, the httpcore network backend of the shared client.
  It resolves the name once, refuses it if *any* address is not public, and opens the TCP
  connection to an address it has just checked, so there is no second lookup that DNS
  rebinding could answer differently. httpcore still believes it talks to the name: the Host
  header, TLS SNI and certificate verification use the URL's hostname, and the pool keys
  connections by name. This is why the URL is not rewritten to the IP with an `sni_hostname`
  override instead: such a pool would key connections by IP and reuse a TLS connection made
  for `a.example` for `b.example` behind the same CDN address. A pooled connection stays on
  the address that was checked when it was opened.

Everything is bounded: one attempt (connect, redirects, body) gets `timeout_s` in total, not
per read, so a server trickling bytes cannot hold an event; the whole fetch including retries
and backoff gets `FetchPolicy.deadline_s`; bodies are streamed and reading stops at
`max_bytes`. Transient failures (connect errors, timeouts, truncated bodies, 5xx, 429) are
retried with jittered exponential backoff; other 4xx, refusals and oversize bodies fail at once.

Decisions: URLs with credentials (`user:pass@`) are refused rather than stripped, since
silently dropping them hides a producer bug and sending them would hand secrets to whatever host
a redirect names. Proxies from the environment are ignored (a proxy would do its own DNS and
defeat the guard). Cookies are never stored. Responses are requested with
`Accept-Encoding: identity` and a compressed response is refused, because decompressing would
let a small body expand past `max_bytes` in one step. The resolver uses the running asyncio
loop, so `Fetcher` is asyncio-only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from ipaddress import IPv4Address, ip_address
from types import TracebackType
from typing import Protocol, Self

import httpcore
import httpx

from moderator.errors import AcquireError, ConfigError, FetchBlocked, TooLarge
from moderator.pipeline.acquire.addresses import (
    IPAddress,
    IPNetwork,
    address_problem,
    host_name_problem,
)
from moderator.settings import PipelineSettings

logger = logging.getLogger(__name__)

SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Names refused without asking DNS (unless allow_private): loopback names (RFC 6761), cloud
# metadata endpoints, and the suffixes reserved for private or link-local names.
INTERNAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "metadata",
        "metadata.goog",
        "metadata.google.internal",
        "instance-data",
    }
)
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")

# What C's inet_aton reads as an IPv4 address besides dotted quads: 2130706433, 0x7f.1, 127.1.
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")
_USERINFO = re.compile(r"//[^/?#]*@")
_SHOWN_URL_CHARS = 200  # error messages end up in DLQ headers and logs: keep them short
_MAX_PORT = 65535
# What parsing an event's URL text can raise: InvalidURL for most malformed URLs, and
# UnicodeEncodeError (a ValueError) for lone surrogates, which httpx does not catch itself.
_URL_ERRORS = (httpx.InvalidURL, ValueError, TypeError)

# getaddrinfo errors that mean "this name does not exist" (retrying cannot help).
_NAME_NOT_FOUND = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)

_USER_AGENT = "moderator-fetch/0.1"
# Scheduling slack on top of the attempt and backoff budget, so that the per-attempt timeout,
# whose message is more precise, is what normally ends a slow fetch.
_DEADLINE_GRACE_S = 0.1
_KEEPALIVE_EXPIRY_S = 5.0  # image hosts repeat; keep idle connections briefly, not forever


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits of one fetch; built from PipelineSettings, or directly in tests.

    `allow_networks` exempts specific networks from the private-address check (an internal
    image store, or loopback test servers) without opening everything as `allow_private` does.
    `allowed_hosts` entries are exact hostnames (punycode for non-ASCII) or `*.example.com`
    for any subdomain; an allowed host is still subject to the address checks.
    """

    timeout_s: float
    retries: int
    max_bytes: int
    allowed_hosts: frozenset[str] = frozenset()
    allow_private: bool = False
    backoff_s: float = 0.2  # first retry waits 0.1-0.2 s, doubling each time
    max_backoff_s: float = 2.0
    max_redirects: int = 5
    allow_networks: frozenset[IPNetwork] = frozenset()
    max_connections: int = 256  # fetches beyond this wait for a pooled connection

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.retries < 0 or self.max_bytes < 1:
            raise ConfigError("fetch policy needs timeout_s > 0, retries >= 0, max_bytes >= 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0 or self.max_redirects < 0:
            raise ConfigError("fetch policy backoffs and max_redirects must not be negative")
        hosts = frozenset(_normalize_host(h.strip()) for h in self.allowed_hosts if h.strip())
        object.__setattr__(self, "allowed_hosts", hosts)

    @classmethod
    def from_settings(cls, s: PipelineSettings) -> FetchPolicy:
        return cls(
            timeout_s=s.fetch_timeout_s,
            retries=s.fetch_retries,
            max_bytes=s.max_image_bytes,
            allowed_hosts=frozenset(s.fetch_allowed_hosts),
            allow_private=s.fetch_allow_private,
            allow_networks=frozenset(s.fetch_allow_networks),
        )

    @property
    def deadline_s(self) -> float:
        """Upper bound of one `fetch`: every attempt's timeout plus the longest backoffs."""
        waits = sum(self._nominal_backoff(n) for n in range(1, self.retries + 1))
        return self.timeout_s * (self.retries + 1) + waits + _DEADLINE_GRACE_S

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1-based), jittered to 50-100 %."""
        return self._nominal_backoff(attempt) * random.uniform(0.5, 1.0)

    def _nominal_backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1))

    def address_problem(self, ip: IPAddress) -> str | None:
        """Why this policy refuses to connect to `ip`, or None."""
        if self.allow_private or any(ip in net for net in self.allow_networks):
            return None
        return address_problem(ip)

    def host_allowed(self, host: str) -> bool:
        if not self.allowed_hosts or host in self.allowed_hosts:
            return True
        return any(p.startswith("*.") and host.endswith(p[1:]) for p in self.allowed_hosts)


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    final_url: str
    attempts: int
    content_type: str | None


class Resolver(Protocol):
    """Turns a hostname into addresses; the guard checks every one before connecting."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]: ...


class SystemResolver:
    """The OS resolver through the running loop's getaddrinfo (raises socket.gaierror)."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found: dict[IPAddress, None] = {}  # ordered set: keep the resolver's preference
        for *_, sockaddr in infos:
            found[ip_address(sockaddr[0])] = None
        return list(found)


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, including inet_aton's odd IPv4 forms; None for a name."""
    try:
        return ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host) and any(c.isdigit() for c in host):
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def redact(url: str | httpx.URL) -> str:
    """`url` as error messages show it: no credentials, query as `?…`, at most 200 chars.

    Never raises: an unparsable URL is shown escaped (surrogates and control characters as
    `\\x..` escapes), since the text ends up in DLQ headers that must encode.
    """
    try:
        u = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except _URL_ERRORS:
        text = _USERINFO.sub("//", str(url)).split("?", 1)[0].split("#", 1)[0]
        text = ascii(text)[1:-1]
    else:
        if u.scheme in SCHEMES:
            host = u.raw_host.decode("ascii")
            host = f"[{host}]" if ":" in host else host
            port = f":{u.port}" if u.port is not None else ""
            path = u.raw_path.decode("ascii").split("?", 1)[0]
            text = f"{u.scheme}://{host}{port}{path}" + ("?…" if u.query else "")
        else:
            text = f"{u.scheme}:…"
    return text if len(text) <= _SHOWN_URL_CHARS else text[: _SHOWN_URL_CHARS - 1] + "…"


def _normalize_host(host: str) -> str:
    return host.lower().rstrip(".")


def _is_internal_name(host: str) -> bool:
    return host in INTERNAL_NAMES or host.endswith(INTERNAL_SUFFIXES)


class _AddressRefused(Exception):
    """Raised inside the connection step; turned into FetchBlocked with the URL attached."""

    def __init__(self, host: str, ip: IPAddress, problem: str) -> None:
        super().__init__(f"host {host} resolves to {ip}, which is {problem}")


class _HostNotFound(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(f"host {host} does not exist")


class _InvalidHost(Exception):
    """The resolver refused the name itself (the idna codec, an embedded NUL, ...)."""

    def __init__(self, host: str, exc: BaseException) -> None:
        super().__init__(f"invalid host name {ascii(host)[1:-1]} ({type(exc).__name__}: {exc})")


class _Transient(Exception):
    """A failure worth retrying; its message says what happened."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that resolves once, checks every address, and connects to a checked one.

    `inner` opens the actual TCP connection (default httpcore's AnyIOBackend); it only ever
    receives IP addresses.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        resolver: Resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._checked_addresses(_normalize_host(host), port, timeout)
        failure: Exception | None = None
        for ip in addresses:  # in resolver order; the per-attempt deadline bounds the total
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # _checked_addresses never returns an empty list
        raise failure

    async def _checked_addresses(
        self, host: str, port: int, limit_s: float | None
    ) -> list[IPAddress]:
        literal = literal_address(host)
        if literal is not None:
            found: list[IPAddress] = [literal]
        else:
            try:
                async with asyncio.timeout(limit_s):
                    found = list(await self._resolver.resolve(host, port))
            except TimeoutError as exc:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
            except socket.gaierror as exc:
                if exc.errno in _NAME_NOT_FOUND:
                    raise _HostNotFound(host) from exc
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            except (ValueError, OverflowError) as exc:
                # UnicodeError ("label empty or too long") from the idna codec, "embedded null
                # character", a port C cannot hold: no resolver takes the name, no retry helps.
                raise _InvalidHost(host, exc) from exc
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            if not found:
                raise httpcore.ConnectError(f"{host} resolved to no addresses")
        # All or nothing: a name with any internal address is an attack or a misconfiguration.
        for ip in found:
            problem = self._policy.address_problem(ip)
            if problem is not None:
                raise _AddressRefused(host, ip, problem)
        return found

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never fetched from")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions and the httpx ones the rest of httpx expects, most specific first.
_ERROR_MAP: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _as_httpx_error(exc: Exception) -> Exception:
    for source, target in _ERROR_MAP:
        if isinstance(exc, source):
            return target(str(exc))
    return exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: httpcore.Response) -> None:
        self._response = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_stream():
                yield chunk
        except Exception as exc:
            mapped = _as_httpx_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose connections go through GuardedBackend.

    httpx's own AsyncHTTPTransport cannot be given a network backend, hence this small adapter.
    """

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except Exception as exc:
            mapped = _as_httpx_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class Fetcher:
    """Fetches image URLs through one shared, guarded httpx client. Close it with `aclose`."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`network_backend` opens TCP connections to checked IPs (tests record them there);
        `ssl_context` replaces the default verification context (certifi, or SSL_CERT_FILE)."""
        self._policy = policy
        backend = GuardedBackend(policy, resolver or SystemResolver(), network_backend)
        pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=policy.max_connections,
            keepalive_expiry=_KEEPALIVE_EXPIRY_S,
            network_backend=backend,
        )
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(pool),
            trust_env=False,  # an environment proxy would resolve names itself, past the guard
            follow_redirects=False,  # each hop is checked in _attempt
            timeout=policy.timeout_s,
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # store no cookies
            headers={
                "User-Agent": _USER_AGENT,
                "Accept": "image/*",
                "Accept-Encoding": "identity",
            },
        )
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    async def fetch(self, url: str) -> Fetched:
        """The body at `url`, within the policy's limits.

        Raises FetchBlocked, TooLarge or AcquireError, each naming the (redacted) URL and
        carrying `attempts`; RuntimeError once the fetcher is closed (a lifecycle bug, not a
        bad event).
        """
        if self._closed:
            raise RuntimeError("Fetcher is closed")
        policy = self._policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.deadline_s
        attempts = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    attempts += 1
                    try:
                        async with asyncio.timeout(policy.timeout_s):
                            return await self._attempt(url, attempts)
                    except TimeoutError:
                        failure = f"no complete response within {policy.timeout_s:g}s"
                    except _Transient as exc:
                        failure = str(exc)
                    delay = policy.backoff(attempts)
                    if attempts > policy.retries or loop.time() + delay >= deadline:
                        raise AcquireError(
                            f"{redact(url)}: {failure}; gave up after {attempts} attempt(s)"
                        )
                    logger.debug("retrying %s in %.2fs: %s", redact(url), delay, failure)
                    await asyncio.sleep(delay)
        except AcquireError as exc:
            exc.attempts = attempts
            raise
        except TimeoutError as exc:
            raise AcquireError(
                f"{redact(url)}: no image within the {policy.deadline_s:g}s fetch deadline",
                attempts=attempts,
            ) from exc

    async def _attempt(self, url: str, attempt: int) -> Fetched:
        """One try: the redirect chain from `url` to a body, every hop checked first."""
        try:
            current = httpx.URL(url)
        except _URL_ERRORS as exc:
            raise AcquireError(f"{redact(url)}: invalid URL ({exc})") from exc
        for _ in range(self._policy.max_redirects + 1):
            self._check_url(current)
            shown = redact(current)
            try:
                async with self._client.stream("GET", current) as response:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECT_STATUSES and location:
                        try:
                            current = current.join(location)
                        except _URL_ERRORS as exc:
                            raise AcquireError(f"{shown}: unusable redirect ({exc})") from exc
                        continue
                    self._check_status(shown, response)
                    data = await self._read_body(shown, response)
                    return Fetched(
                        data=data,
                        final_url=str(current),
                        attempts=attempt,
                        content_type=response.headers.get("content-type"),
                    )
            except _AddressRefused as exc:
                raise FetchBlocked(f"{shown}: {exc}") from None
            except (_HostNotFound, _InvalidHost) as exc:
                raise AcquireError(f"{shown}: {exc}") from None
            except httpx.TransportError as exc:
                raise _classify(shown, exc) from exc
        raise AcquireError(f"{redact(url)}: more than {self._policy.max_redirects} redirects")

    def _check_url(self, url: httpx.URL) -> None:
        """Refuse a hop before any connection: scheme, credentials, host, port, allowlist, IPs."""
        shown = redact(url)
        if url.scheme not in SCHEMES:
            raise FetchBlocked(f"{shown}: scheme {url.scheme!r} is not fetched (http/https only)")
        if url.userinfo:
            raise FetchBlocked(f"{shown}: URLs carrying credentials are refused")
        host = _normalize_host(url.raw_host.decode("ascii"))
        if not host:
            raise AcquireError(f"{shown}: URL has no host")
        try:
            url.host  # noqa: B018 - IDNA-decodes the name, as httpx does when sending
        except ValueError as exc:  # idna.IDNAError (a UnicodeError) on malformed xn-- labels
            raise AcquireError(f"{shown}: invalid host name ({exc})") from None
        if url.port is not None and not 0 < url.port <= _MAX_PORT:
            raise AcquireError(f"{shown}: port {url.port} is outside 1-{_MAX_PORT}")
        ip = literal_address(host)
        name_problem = host_name_problem(host) if ip is None else None
        if name_problem is not None:
            raise AcquireError(f"{shown}: invalid host name ({name_problem})")
        if not self._policy.host_allowed(host):
            raise FetchBlocked(f"{shown}: host {host} is not in the fetch allowlist")
        if self._policy.allow_private:
            return
        if _is_internal_name(host):
            raise FetchBlocked(f"{shown}: host {host} is an internal name")
        problem = None if ip is None else self._policy.address_problem(ip)
        if problem is not None:
            raise FetchBlocked(f"{shown}: address {ip} is {problem}")

    @staticmethod
    def _check_status(shown: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        what = f"HTTP {status} {response.reason_phrase}".rstrip()
        if status == 429 or status >= 500:
            raise _Transient(what)
        raise AcquireError(f"{shown}: {what}")

    async def _read_body(self, shown: str, response: httpx.Response) -> bytes:
        limit = self._policy.max_bytes
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise AcquireError(f"{shown}: refused compressed body (Content-Encoding {encoding})")
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise TooLarge(f"{shown}: Content-Length {int(declared)} is over {limit} bytes")
        body = bytearray()
        # Chunks are at most one network read (64 KiB in httpcore), so at most that much past
        # the limit is ever held, and only until this raises.
        async for chunk in response.aiter_raw():
            if len(body) + len(chunk) > limit:
                raise TooLarge(f"{shown}: body is over {limit} bytes (stopped reading)")
            body += chunk
        return bytes(body)


def _classify(shown: str, exc: httpx.TransportError) -> Exception:
    """Transport failures are transient, except those another try cannot fix."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return AcquireError(f"{shown}: TLS certificate rejected ({cause.verify_message})")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return AcquireError(f"{shown}: {type(exc).__name__}: {exc}")
    return _Transient(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
