"""The ADS client end to end: a test control plane pushes, real Redis and Dubbo traffic follows.

The control plane (tests/xds/control_plane.py) is grpcio with xds-protos' servicer; the
proxy runs with a real adapter and its ``XdsClient`` applies each push through the
adapter's reload, as ``metaprotocol run`` does.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("grpc")
pytest.importorskip("envoy.service.discovery.v3.ads_pb2_grpc")

from envoy.config.cluster.v3 import cluster_pb2

from metaprotocol.configfile import parse_config
from metaprotocol.configfile.xds import xds_settings
from metaprotocol.samples.dubbo_provider import GREETINGS
from metaprotocol.testing.serving import RunningProxy, start_proxy
from metaprotocol.xds.client import XdsClient
from metaprotocol.xds.translate import CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE
from tests.e2e.dubbo_frames import DubboClient
from tests.e2e.servers import DEADLINE, dubbo_provider, scrape_admin, wait_until
from tests.e2e.test_dubbo import _close_client_connection
from tests.xds.control_plane import ControlPlane
from tests.xds.resources import SERVICE, action, assignment, cluster, prop, route_config, single

ADAPTERS = ("asyncio", "blocking", "trio")


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    cp = ControlPlane()
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def _config(plane: ControlPlane, codec: str) -> Any:
    return parse_config({
        "admin": {"address": "127.0.0.1:0"},
        "xds": {"address": f"127.0.0.1:{plane.port}", "node": {"id": "test-proxy"}},
        "listeners": [{"name": codec, "address": "127.0.0.1:0", "codec": codec,
                       "routes": {"rds": f"{codec}-routes"}}],
    })  # fmt: skip


def _attach(running: RunningProxy, config: Any) -> XdsClient:
    settings = xds_settings(config)
    assert settings is not None
    client = XdsClient(
        settings, config, running.reload, running.call, running.proxy.stats, backoff=(0.05, 0.2)
    )
    client.start()
    return client


def _redis(port: int, *command: str) -> bytes:
    payload = f"*{len(command)}\r\n".encode() + b"".join(
        f"${len(c)}\r\n{c}\r\n".encode() for c in command
    )
    with socket.create_connection(("127.0.0.1", port), DEADLINE) as sock:
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\r\n") or (data.startswith(b"$") and data.count(b"\r\n") < 2):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def _acked(plane: ControlPlane, nonce: str) -> None:
    reply = plane.reply(nonce)
    assert not reply.HasField("error_detail"), reply.error_detail.message


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_redis_traffic_follows_each_push_and_survives_the_control_plane(
    adapter: str, plane: ControlPlane, redis_port: int, redis_port_b: int
) -> None:
    assert _redis(redis_port, "SET", "xds:who", "a") == b"+OK\r\n"
    assert _redis(redis_port_b, "SET", "xds:who", "b") == b"+OK\r\n"
    plane.push(CLUSTER_TYPE, "c1", [cluster("cache")])
    endpoints_nonce = plane.push(ENDPOINT_TYPE, "e1", [assignment("cache", [redis_port])])
    routes_nonce = plane.push(ROUTE_TYPE, "r1", [route_config("redis-routes", [], action("cache"))])
    config = _config(plane, "redis")
    with start_proxy(config, adapter) as running:
        client = _attach(running, config)
        try:
            port = running.ports["redis"]
            _acked(plane, endpoints_nonce)
            _acked(plane, routes_nonce)
            assert _redis(port, "GET", "xds:who") == b"$1\r\na\r\n"

            # EDS moves the cluster to the other server; UNHEALTHY endpoints get nothing.
            _acked(plane, plane.push(ENDPOINT_TYPE, "e2", [
                assignment("cache", [redis_port_b], unhealthy=[redis_port])
            ]))  # fmt: skip
            for _ in range(5):
                assert _redis(port, "GET", "xds:who") == b"$1\r\nb\r\n"

            # A bad cluster is NACKed with why; the running config keeps serving.
            bad = cluster("cache", lb=cluster_pb2.Cluster.CLUSTER_PROVIDED)
            nack = plane.reply(plane.push(CLUSTER_TYPE, "c-bad", [bad]))
            assert "lb_policy CLUSTER_PROVIDED is not supported" in nack.error_detail.message
            assert nack.version_info == "c1"  # the last version accepted
            assert _redis(port, "GET", "xds:who") == b"$1\r\nb\r\n"
            stats = running.proxy.stats
            assert running.call(lambda: stats.counters[("xds_rejections", (("type", "cds"),))]) == 1
            assert running.call(lambda: stats.counters[("xds_updates", (("type", "eds"),))]) >= 2

            dump = json.loads(scrape_admin(running.admin_address or ("", 0), "/config_dump"))
            assert dump["xds_resources"]["endpoints"]["cache"]["version"] == "e2"
            assert dump["xds_resources"]["routes"]["redis-routes"]["version"] == "r1"
            metrics = scrape_admin(running.admin_address or ("", 0))
            assert 'metaprotocol_xds_rejections_total{type="cds"} 1' in metrics
            assert "metaprotocol_xds_connected 1" in metrics

            # The control plane goes away: traffic goes on; it comes back: the client too.
            plane.stop()
            wait_until(lambda: running.call(lambda: stats.gauge("xds_connected")) == 0)
            for _ in range(5):
                assert _redis(port, "GET", "xds:who") == b"$1\r\nb\r\n"
            plane.push(CLUSTER_TYPE, "c1", [cluster("cache")])  # the bad one is gone
            plane.start()
            wait_until(lambda: running.call(lambda: stats.gauge("xds_connected")) == 1)
            assert _redis(port, "GET", "xds:who") == b"$1\r\nb\r\n"
            _acked(plane, plane.push(ENDPOINT_TYPE, "e3", [assignment("cache", [redis_port])]))
            assert _redis(port, "GET", "xds:who") == b"$1\r\na\r\n"
        finally:
            client.stop()


def test_routes_to_clusters_not_pushed_yet_wait_for_them(
    plane: ControlPlane, redis_port: int
) -> None:
    assert _redis(redis_port, "SET", "xds:late", "here") == b"+OK\r\n"
    plane.push(CLUSTER_TYPE, "c0", [])
    routes_nonce = plane.push(ROUTE_TYPE, "r1", [route_config("redis-routes", [], action("late"))])
    config = _config(plane, "redis")
    with start_proxy(config, "asyncio") as running:
        client = _attach(running, config)
        try:
            port = running.ports["redis"]
            wait_until(lambda: plane.streams() == 1 and len(plane.requests) >= 2)
            late = cluster("late", eds=False, static=[redis_port])
            _acked(plane, plane.push(CLUSTER_TYPE, "c1", [late]))
            _acked(plane, routes_nonce)  # not refused: applied once the cluster came
            assert _redis(port, "GET", "xds:late") == b"$4\r\nhere\r\n"
            # A route to a cluster that does not come with the next CDS response is refused.
            nonce = plane.push(ROUTE_TYPE, "r2", [route_config("redis-routes", [], action("x"))])
            _acked(plane, plane.push(CLUSTER_TYPE, "c2", [late]))
            assert "names unknown cluster 'x'" in plane.reply(nonce).error_detail.message
            assert _redis(port, "GET", "xds:late") == b"$4\r\nhere\r\n"
        finally:
            client.stop()


@pytest.mark.parametrize("adapter", ("asyncio", "blocking"))
def test_dubbo_routes_from_rds_follow_each_push(adapter: str, plane: ControlPlane) -> None:
    with dubbo_provider() as one, dubbo_provider() as two:
        plane.push(CLUSTER_TYPE, "1", [cluster("one", eds=False, static=[one]),
                                       cluster("two", eds=False, static=[two])])  # fmt: skip
        first = plane.push(ROUTE_TYPE, "1", [route_config("dubbo-routes", [
            (single(prop("version"), prefix="2."), action("two", name="v2")),
            (single(SERVICE, exact=GREETINGS), action("one", name="greet")),
        ])])  # fmt: skip
        config = _config(plane, "dubbo")
        with start_proxy(config, adapter) as running:
            client = _attach(running, config)
            host = f"127.0.0.1:{running.ports['dubbo']}"
            try:
                _acked(plane, first)
                v1 = DubboClient(GREETINGS, group="", version="1.0.0", host=host)
                v2 = DubboClient(GREETINGS, group="", version="2.0.0", host=host)
                assert v1.call("sayHi", "ada", timeout=DEADLINE) == "hi, ada"
                assert v2.call("sayHi", "ada", timeout=DEADLINE) == "hello ada, from v2"
                assert _hits(running) == {"v2": 1, "greet": 1}

                # The next push sends the service to the other cluster by a new route.
                _acked(plane, plane.push(ROUTE_TYPE, "2", [route_config("dubbo-routes", [
                    (single(SERVICE, exact=GREETINGS), action("two", name="greet-two")),
                ])]))  # fmt: skip
                assert v1.call("sayHi", "bo", timeout=DEADLINE) == "hi, bo"
                assert _hits(running) == {"v2": 1, "greet": 1, "greet-two": 1}
            finally:
                client.stop()
                _close_client_connection(host)


def _hits(running: RunningProxy) -> dict[str, int]:
    snapshot = running.call(lambda: running.proxy.stats.snapshot())
    return {
        dict(labels)["route"]: value
        for (name, labels), value in snapshot.counters.items()
        if name == "route_hit" and value
    }
