"""Fixtures for the acquire tests: every Fetcher gets `LoopbackOnly` as its network backend
(it refuses anything but loopback) and a table resolver (no real DNS)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from loopback_http import (
    HOST,
    LoopbackOnly,
    MakeFetcher,
    TableResolver,
    TinyServer,
)

from moderator.pipeline.acquire.fetch import Fetcher, FetchPolicy


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
