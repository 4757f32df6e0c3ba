"""The SSRF guard: which hosts and addresses a fetch may reach, checked where it matters.

Events name images by URL, and whoever writes events chooses the URL, so a naive fetch would let
them make this service call cloud metadata endpoints, Redis on localhost or any internal
service. The guard works in two places:

* Before every request (`check_url`) — the first URL and each redirect hop — the URL itself is
  checked: http/https only, no credentials, host in the allowlist when one is set, no internal
  names (`localhost`, `*.internal`, metadata hosts), and a literal address, including the
  `2130706433` or `0x7f.1` spellings C resolvers accept, must lie outside the special-purpose
  ranges that `moderator.pipeline.acquire.addresses` writes out (not Python's `ipaddress`
  tables, which change between releases). A host name no resolver accepts (an empty or
  over-long label, a character other than letters, digits, `-` and `_`) or a port outside
  1-65535 is refused there too, as `fetch_failed` without a retry: it is a broken URL, not an
  attack.
* At connect time, inside `GuardedBackend`, the httpcore network backend of the shared client.
  It resolves the name once, refuses it if *any* address is not public, and opens the TCP
  connection to an address it has just checked, so there is no second lookup that DNS
  rebinding could answer differently. httpcore still believes it talks to the name: the Host
  header, TLS SNI and certificate verification use the URL's hostname, and the pool keys
  connections by name. This is why the URL is not rewritten to the IP with an `sni_hostname`
  override instead: such a pool would key connections by IP and reuse a TLS connection made
  for `a.example` for `b.example` behind the same CDN address. A pooled connection stays on
  the address that was checked when it was opened.

URLs with credentials (`user:pass@`) are refused rather than stripped, since silently dropping
them hides a producer bug and sending them would hand secrets to whatever host a redirect names.
The resolver uses the running asyncio loop, so the guard is asyncio-only.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from ipaddress import IPv4Address, ip_address
from typing import Protocol

import httpcore
import httpx

from moderator.errors import AcquireError, FetchBlocked
from moderator.pipeline.acquire.addresses import IPAddress, host_name_problem

SCHEMES = frozenset({"http", "https"})

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
_MAX_PORT = 65535

# getaddrinfo errors that mean "this name does not exist" (retrying cannot help).
_NAME_NOT_FOUND = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


class GuardPolicy(Protocol):
    """What the guard asks of a fetch policy (`FetchPolicy` answers it)."""

    @property
    def allow_private(self) -> bool: ...

    def address_problem(self, ip: IPAddress) -> str | None:
        """Why this policy refuses to connect to `ip`, or None."""
        ...

    def host_allowed(self, host: str) -> bool: ...


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


def normalize_host(host: str) -> str:
    """A host as the guard compares it: lower case, no trailing dot."""
    return host.lower().rstrip(".")


def _is_internal_name(host: str) -> bool:
    return host in INTERNAL_NAMES or host.endswith(INTERNAL_SUFFIXES)


def check_url(url: httpx.URL, shown: str, policy: GuardPolicy) -> None:
    """Refuse a hop before any connection: scheme, credentials, host, port, allowlist, IPs.

    `shown` is the URL as error messages show it. Raises FetchBlocked for what the guard
    refuses, AcquireError for a URL no request could be made from.
    """
    if url.scheme not in SCHEMES:
        raise FetchBlocked(f"{shown}: scheme {url.scheme!r} is not fetched (http/https only)")
    if url.userinfo:
        raise FetchBlocked(f"{shown}: URLs carrying credentials are refused")
    host = normalize_host(url.raw_host.decode("ascii"))
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
    if not policy.host_allowed(host):
        raise FetchBlocked(f"{shown}: host {host} is not in the fetch allowlist")
    if policy.allow_private:
        return
    if _is_internal_name(host):
        raise FetchBlocked(f"{shown}: host {host} is an internal name")
    problem = None if ip is None else policy.address_problem(ip)
    if problem is not None:
        raise FetchBlocked(f"{shown}: address {ip} is {problem}")


class AddressRefused(Exception):
    """Raised inside the connection step; the fetcher turns it into FetchBlocked with the URL."""

    def __init__(self, host: str, ip: IPAddress, problem: str) -> None:
        super().__init__(f"host {host} resolves to {ip}, which is {problem}")


class HostNotFound(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(f"host {host} does not exist")


class InvalidHost(Exception):
    """The resolver refused the name itself (the idna codec, an embedded NUL, ...)."""

    def __init__(self, host: str, exc: BaseException) -> None:
        super().__init__(f"invalid host name {ascii(host)[1:-1]} ({type(exc).__name__}: {exc})")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that resolves once, checks every address, and connects to a checked one.

    `inner` opens the actual TCP connection (default httpcore's AnyIOBackend); it only ever
    receives IP addresses.
    """

    def __init__(
        self,
        policy: GuardPolicy,
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
        addresses = await self._checked_addresses(normalize_host(host), port, timeout)
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
                    raise HostNotFound(host) from exc
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            except (ValueError, OverflowError) as exc:
                # UnicodeError ("label empty or too long") from the idna codec, "embedded null
                # character", a port C cannot hold: no resolver takes the name, no retry helps.
                raise InvalidHost(host, exc) from exc
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            if not found:
                raise httpcore.ConnectError(f"{host} resolved to no addresses")
        # All or nothing: a name with any internal address is an attack or a misconfiguration.
        for ip in found:
            problem = self._policy.address_problem(ip)
            if problem is not None:
                raise AddressRefused(host, ip, problem)
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


# httpcore's exceptions and the httpx ones of the same name that the rest of httpx expects,
# most specific first.
_ERROR_NAMES = (
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "TimeoutException",
    "ConnectError",
    "ReadError",
    "WriteError",
    "NetworkError",
    "UnsupportedProtocol",
    "RemoteProtocolError",
    "LocalProtocolError",
    "ProtocolError",
)
_ERROR_MAP: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = tuple(
    (getattr(httpcore, name), getattr(httpx, name)) for name in _ERROR_NAMES
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
