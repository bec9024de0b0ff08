"""Real sharded Redis deployments for the end-to-end tests: a Redis Cluster and plain shards.

- :func:`redis_cluster` starts ``masters`` (x ``1 + replicas``) ``redis-server
  --cluster-enabled yes`` on free loopback ports (the cluster bus on another free port,
  ``--cluster-port``), joins them with ``redis-cli --cluster create ... --cluster-yes`` and
  waits, bounded, until every node says ``cluster_state:ok`` and knows all 16384 slots.
- :func:`redis_shards` starts ``count`` standalone redis-servers (the shards behind a
  ``ring_hash`` / ``maglev`` cluster).

Like every peer here, a missing binary skips locally and fails in CI (tests/peers.py), and
the context manager stops what it started whatever happens in the test.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from metaprotocol.codecs.redis.request import multibulk
from metaprotocol.codecs.redis.values import RespValue, read_value
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA
from tests.e2e.servers import DEADLINE, _stop, free_port, redis_server, wait_for_port, wait_until
from tests.peers import require_binary

__all__ = ["RedisCluster", "command", "raw_command", "redis_cluster", "redis_shards"]


def raw_command(port: int, *arguments: str | bytes, host: str = "127.0.0.1") -> bytes:
    """Send one command to a Redis node and return the raw bytes of its one reply
    (framed by the proxy's own reply decoder)."""
    from metaprotocol.codecs.redis import RedisCodec

    codec = RedisCodec(Side.UPSTREAM, {}, 64 * 1024 * 1024)
    words = [a.encode() if isinstance(a, str) else a for a in arguments]
    buffer = bytearray()
    with socket.create_connection((host, port), timeout=DEADLINE) as sock:
        sock.sendall(multibulk(words))
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{host}:{port} closed before replying")
            buffer += chunk
            reply = codec.decode(buffer)
            if reply is not NEED_DATA:
                return reply.frame


def command(port: int, *arguments: str | bytes) -> RespValue:
    """:func:`raw_command`'s reply as a value."""
    return read_value(raw_command(port, *arguments))


@dataclass(frozen=True)
class RedisCluster:
    """A running Redis Cluster: ``ports[i]`` is node i's client port; the first
    ``masters`` nodes were created as primaries."""

    ports: tuple[int, ...]
    masters: int

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]


def _cluster_ready(ports: tuple[int, ...], replicas: int) -> bool:
    """Every node says the cluster is ok, and knows who serves each slot: all 16384
    slots, each range with its primary and all its replicas."""
    for port in ports:
        info = command(port, "CLUSTER", "INFO")
        if not isinstance(info, bytes) or b"cluster_state:ok" not in info:
            return False
        slots = command(port, "CLUSTER", "SLOTS")
        if not isinstance(slots, list):
            return False
        covered = 0
        for entry in slots:
            assert isinstance(entry, list) and isinstance(entry[0], int)
            assert isinstance(entry[1], int)
            covered += entry[1] - entry[0] + 1
            if len(entry) != 3 + replicas:
                return False
        if covered != 16384:
            return False
    return True


@contextlib.contextmanager
def redis_cluster(masters: int = 3, replicas: int = 0) -> Iterator[RedisCluster]:
    """A Redis Cluster of ``masters`` primaries with ``replicas`` replicas each."""
    server = require_binary("redis-server")
    cli = require_binary("redis-cli")
    count = masters * (1 + replicas)
    with (
        tempfile.TemporaryDirectory(prefix="mp-redis-cluster-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        ports: list[int] = []
        for index in range(count):
            port, bus = free_port(), free_port()
            while bus == port:
                bus = free_port()
            directory = Path(tmp) / str(index)
            directory.mkdir()
            proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no",
                 "--dir", str(directory), "--daemonize", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            stack.callback(_stop, proc)
            wait_for_port(port, proc)
            ports.append(port)
        created = subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout.decode() + created.stderr.decode()
        frozen = tuple(ports)
        ready = lambda: _cluster_ready(frozen, replicas)  # noqa: E731
        wait_until(ready, DEADLINE * 3, "the cluster to be ready")
        yield RedisCluster(frozen, masters)


@contextlib.contextmanager
def redis_shards(count: int = 3) -> Iterator[tuple[int, ...]]:
    """``count`` standalone redis-servers; yields their ports."""
    with contextlib.ExitStack() as stack:
        yield tuple(stack.enter_context(redis_server()) for _ in range(count))
