"""Fixtures shared by the end-to-end tests: the adapters to run over and session-wide peers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.servers import nginx_server, redis_server

ADAPTERS = ("asyncio", "uvloop", "trio", "blocking")
"""Every adapter the serving helper runs; ``trio`` is the anyio adapter on trio."""


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """One redis-server for the session (tests use distinct keys)."""
    with redis_server() as port:
        yield port


@pytest.fixture(scope="session")
def redis_port_b() -> Iterator[int]:
    """A second redis-server, for routing tests."""
    with redis_server() as port:
        yield port


@pytest.fixture(scope="session")
def nginx() -> Iterator[tuple[int, Path]]:
    with nginx_server() as server:
        yield server
