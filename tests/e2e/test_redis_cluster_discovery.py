"""The blocking slot-map fetcher against real Redis Clusters: a 3-primary cluster, dead
seeds skipped, logins, TLS, a server that is not a cluster, and the CLUSTER SLOTS fallback
of servers before Redis 7.0."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaprotocol.codecs.redis.cluster import CLUSTER_SHARDS, CLUSTER_SLOTS
from metaprotocol.codecs.redis.slots import SLOT_COUNT, key_slot
from metaprotocol.configfile import parse_config
from metaprotocol.core.config import ClusterTls, Endpoint
from metaprotocol.core.secrets import Credentials, Secret
from metaprotocol.discovery.redis_cluster import (
    SlotMapUnavailable,
    fetch_cluster_slot_map,
    fetch_slot_map,
)
from tests.e2e.redis_clusters import RedisCluster, command, raw_command
from tests.e2e.servers import MiniServer, free_port, recv_exactly, redis_server, wait_until
from tests.e2e.tls_peers import make_pki, redis_tls_server, tls_connect

SUBCOMMANDS = {CLUSTER_SHARDS: "SHARDS", CLUSTER_SLOTS: "SLOTS"}


def _seeds(*ports: int) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", port) for port in ports]


def test_the_slot_map_of_a_real_cluster_agrees_with_its_nodes(
    redis_cluster_3: RedisCluster,
) -> None:
    slot_map = fetch_slot_map(_seeds(*redis_cluster_3.ports), timeout=5)
    assert slot_map.uncovered == 0
    primaries = sorted(s.primary.port for s in slot_map.shards if s.primary is not None)
    assert primaries == sorted(redis_cluster_3.ports)
    # Each key, sent to the node the map names, is served there: no MOVED.
    for i in range(200):
        key = f"discovery:{i}"
        owner = slot_map.primary(key_slot(key))
        assert owner is not None
        assert raw_command(owner.port, "SET", key, "v") == b"+OK\r\n"
    # The map's node ids are the nodes' own.
    ids = {node.port: node.node_id for node in slot_map.nodes()}
    for port in redis_cluster_3.ports:
        assert command(port, "CLUSTER", "MYID") == ids[port].encode()


def test_dead_seeds_are_skipped_and_all_dead_is_named(redis_cluster_3: RedisCluster) -> None:
    dead = free_port()
    slot_map = fetch_slot_map(_seeds(dead, redis_cluster_3.ports[1]), timeout=5)
    assert slot_map.uncovered == 0
    other = free_port()
    with pytest.raises(SlotMapUnavailable) as caught:
        fetch_slot_map(_seeds(dead, other), timeout=2)
    message = str(caught.value)
    assert f"127.0.0.1:{dead}: ConnectionRefusedError" in message
    assert f"127.0.0.1:{other}: ConnectionRefusedError" in message
    with pytest.raises(SlotMapUnavailable, match="no seed nodes"):
        fetch_slot_map([])


def test_a_cluster_config_gives_seeds_and_settings(redis_cluster_3: RedisCluster) -> None:
    config = parse_config({
        "listeners": [{"name": "front", "address": "127.0.0.1:0", "codec": "redis",
                       "routes": [{"name": "all", "route": {"cluster": "rc"}}]}],
        "clusters": [{"name": "rc", "endpoints": redis_cluster_3.seeds, "redis_cluster": {}}],
    })  # fmt: skip
    assert fetch_cluster_slot_map(config.clusters[0]).uncovered == 0


def test_a_server_that_is_not_a_cluster_is_refused_after_logging_in() -> None:
    with redis_server(password="sesame") as port:
        good = Credentials(password=Secret("sesame"))
        with pytest.raises(SlotMapUnavailable, match="cluster support disabled"):
            fetch_slot_map(_seeds(port), auth=good)  # logged in: the CLUSTER error shows
        bad = Credentials(password=Secret("wrong"))
        with pytest.raises(SlotMapUnavailable, match="upstream refused AUTH: WRONGPASS"):
            fetch_slot_map(_seeds(port), auth=bad)
        with pytest.raises(SlotMapUnavailable, match="NOAUTH"):
            fetch_slot_map(_seeds(port))


def test_a_seed_that_never_answers_times_out() -> None:
    def read_and_never_answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    with (
        MiniServer(read_and_never_answer) as server,
        pytest.raises(SlotMapUnavailable, match="TimeoutError"),
    ):
        fetch_slot_map(_seeds(server.port), timeout=0.3)


@pytest.mark.parametrize("older", [True, False])
def test_servers_before_redis_7_are_asked_cluster_slots(
    redis_cluster_3: RedisCluster, older: bool
) -> None:
    """A stand-in for an old server: it refuses CLUSTER SHARDS as Redis 6 does and relays
    anything else to a real node."""
    real = redis_cluster_3.ports[0]
    asked: list[bytes] = []

    def behaviour(conn: socket.socket) -> None:
        for expected in (CLUSTER_SHARDS, CLUSTER_SLOTS):
            data = recv_exactly(conn, len(expected))
            asked.append(data)
            if data == CLUSTER_SHARDS and older:
                conn.sendall(b"-ERR Unknown subcommand or wrong number of arguments for "
                             b"'SHARDS'. Try CLUSTER HELP.\r\n")  # fmt: skip
                continue
            conn.sendall(raw_command(real, "CLUSTER", SUBCOMMANDS[data]))
            return

    with MiniServer(behaviour) as server:
        slot_map = fetch_slot_map(_seeds(server.port), timeout=5)
    assert asked == ([CLUSTER_SHARDS, CLUSTER_SLOTS] if older else [CLUSTER_SHARDS])
    assert slot_map.uncovered == 0
    assert sorted(n.port for n in slot_map.nodes()) == sorted(redis_cluster_3.ports)


@contextlib.contextmanager
def _tls_cluster_node() -> Iterator[tuple[int, Path]]:
    """A one-node Redis Cluster reachable only over TLS, owning every slot."""
    with tempfile.TemporaryDirectory(prefix="mp-tls-cluster-") as tmp:
        pki = make_pki(Path(tmp))
        extra = ("--cluster-enabled", "yes", "--tls-cluster", "yes", "--cluster-port",
                 str(free_port()), "--cluster-config-file", f"{tmp}/nodes.conf")  # fmt: skip
        with redis_tls_server(pki, *extra) as port:
            context = pki.client_context(with_cert=True)
            with tls_connect(port, context) as sock:
                sock.sendall(b"*4\r\n$7\r\nCLUSTER\r\n$13\r\nADDSLOTSRANGE\r\n$1\r\n0\r\n"
                             b"$5\r\n16383\r\n")  # fmt: skip
                assert recv_exactly(sock, 5) == b"+OK\r\n"

            def ready() -> bool:
                with tls_connect(port, context) as sock:
                    sock.sendall(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n")
                    return b"cluster_state:ok" in sock.recv(4096)

            wait_until(ready, message="the TLS cluster node to be ready")
            yield port, Path(tmp)


def test_a_tls_cluster_is_fetched_over_tls_with_its_tls_port() -> None:
    with _tls_cluster_node() as (port, tmp):
        tls = ClusterTls(
            ca_file=str(tmp / "ca.pem"),
            cert_file=str(tmp / "client.pem"),
            key_file=str(tmp / "client.key"),
            server_name="localhost",
        )
        slot_map = fetch_slot_map(_seeds(port), tls=tls, timeout=5)
        assert slot_map.uncovered == 0
        assert [(n.host, n.port) for n in slot_map.nodes()] == [("127.0.0.1", port)]
        assert len(slot_map.shards) == 1 and slot_map.shards[0].ranges == ((0, SLOT_COUNT - 1),)
        with pytest.raises(SlotMapUnavailable):  # plaintext to a TLS-only port
            fetch_slot_map(_seeds(port), timeout=2)
