"""Fixtures shared by the end-to-end tests: the adapters to run over and session-wide peers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.redis_clusters import RedisCluster, redis_cluster, redis_shards
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
def redis_cluster_3() -> Iterator[RedisCluster]:
    """A real Redis Cluster of three primaries (no replicas) for the session; tests use
    distinct keys and must leave the slot layout as they found it."""
    with redis_cluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_shards_3() -> Iterator[tuple[int, ...]]:
    """Three standalone redis-servers (shards behind a ring_hash or maglev cluster)."""
    with redis_shards(3) as ports:
        yield ports


@pytest.fixture(scope="session")
def nginx() -> Iterator[tuple[int, Path]]:
    with nginx_server() as server:
        yield server
