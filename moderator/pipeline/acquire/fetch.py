"""Fetch an event's image bytes from an http(s) URL, bounded in time and size, through the guard.

Every request goes through `moderator.pipeline.acquire.guard`, which refuses URLs and
addresses an event must not make this service reach (cloud metadata, localhost, internal
services). Redirects are followed here by hand (at most `max_redirects`) so that the guard
checks every hop before it is requested.

Everything is bounded: one attempt (connect, redirects, body) gets `timeout_s` in total, not
per read, so a server trickling bytes cannot hold an event; the whole fetch including retries
and backoff gets `FetchPolicy.deadline_s`; bodies are streamed and reading stops at
`max_bytes`. Transient failures (connect errors, timeouts, truncated bodies, 5xx, 429) are
retried with jittered exponential backoff; other 4xx, refusals and oversize bodies fail at once.

Decisions: proxies from the environment are ignored (a proxy would do its own DNS and defeat the
guard). Cookies are never stored. Responses are requested with `Accept-Encoding: identity` and a
compressed response is refused, because decompressing would let a small body expand past
`max_bytes` in one step. The guard's resolver uses the running asyncio loop, so `Fetcher` is
asyncio-only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Self

import httpcore
import httpx

from moderator.errors import AcquireError, ConfigError, FetchBlocked, TooLarge
from moderator.pipeline.acquire.addresses import IPAddress, IPNetwork, address_problem
from moderator.pipeline.acquire.guard import (
    SCHEMES,
    AddressRefused,
    GuardedBackend,
    GuardedTransport,
    HostNotFound,
    InvalidHost,
    Resolver,
    SystemResolver,
    check_url,
    normalize_host,
)
from moderator.settings import PipelineSettings

logger = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_USERINFO = re.compile(r"//[^/?#]*@")
_SHOWN_URL_CHARS = 200  # error messages end up in DLQ headers and logs: keep them short
# What parsing an event's URL text can raise: InvalidURL for most malformed URLs, and
# UnicodeEncodeError (a ValueError) for lone surrogates, which httpx does not catch itself.
_URL_ERRORS = (httpx.InvalidURL, ValueError, TypeError)

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
        hosts = frozenset(normalize_host(h.strip()) for h in self.allowed_hosts if h.strip())
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


class _Transient(Exception):
    """A failure worth retrying; its message says what happened."""


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
            shown = redact(current)
            check_url(current, shown, self._policy)
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
            except AddressRefused as exc:
                raise FetchBlocked(f"{shown}: {exc}") from None
            except (HostNotFound, InvalidHost) as exc:
                raise AcquireError(f"{shown}: {exc}") from None
            except httpx.TransportError as exc:
                raise _classify(shown, exc) from exc
        raise AcquireError(f"{redact(url)}: more than {self._policy.max_redirects} redirects")

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
