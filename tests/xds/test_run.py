"""``metaprotocol run`` with an ``xds`` block: it starts the client, applies pushes on every
adapter, and a SIGHUP keeps the control plane's resources over the reloaded file."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("grpc")
pytest.importorskip("envoy.service.discovery.v3.ads_pb2_grpc")

from metaprotocol.configfile import parse_config
from metaprotocol.runner import XDS_EXTRA_HINT, xds_problems
from metaprotocol.xds.translate import CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE
from tests.e2e.servers import wait_until
from tests.e2e.test_lifecycle import ProxyProcess
from tests.xds.control_plane import ControlPlane
from tests.xds.resources import action, assignment, cluster, route_config
from tests.xds.test_ads_e2e import _acked, _redis


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    cp = ControlPlane()
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.mark.parametrize("adapter", ("asyncio", "trio", "blocking"))
def test_run_serves_from_xds_and_keeps_it_across_sighup(
    adapter: str, plane: ControlPlane, redis_port: int, redis_port_b: int, tmp_path: Path
) -> None:
    assert _redis(redis_port, "SET", "xds:run", "a") == b"+OK\r\n"
    assert _redis(redis_port_b, "SET", "xds:run", "b") == b"+OK\r\n"
    config_path = tmp_path / "proxy.yaml"
    data: dict[str, Any] = {
        "xds": {"address": f"127.0.0.1:{plane.port}", "node": {"id": "run-test"}},
        "listeners": [{"name": "redis", "address": "127.0.0.1:0", "codec": "redis",
                       "routes": {"rds": "redis-routes"}}],
    }  # fmt: skip
    config_path.write_text(yaml.safe_dump(data))
    plane.push(CLUSTER_TYPE, "1", [cluster("cache")])
    endpoints = plane.push(ENDPOINT_TYPE, "1", [assignment("cache", [redis_port])])
    nonce = plane.push(ROUTE_TYPE, "1", [route_config("redis-routes", [], action("cache"))])
    process = ProxyProcess(config_path, adapter)
    try:
        found = process.wait_for_line(r"listener redis on 127\.0\.0\.1:(\d+)")
        port = int(found.group(1))
        _acked(plane, endpoints)
        _acked(plane, nonce)
        assert _redis(port, "GET", "xds:run") == b"$1\r\na\r\n"

        # The reloaded file adds a listener on new RDS routes: they are asked for too.
        second = plane.push(ROUTE_TYPE, "2", [
            route_config("redis-routes", [], action("cache")),
            route_config("other-routes", [], action("cache")),
        ])  # fmt: skip
        _acked(plane, second)
        data["listeners"].append({"name": "other", "address": "127.0.0.1:0", "codec": "redis",
                                  "routes": {"rds": "other-routes"}})  # fmt: skip
        config_path.write_text(yaml.safe_dump(data))
        mark = len(process.lines)
        process.proc.send_signal(signal.SIGHUP)
        process.wait_for_line(r"reloaded ", start=mark)
        assert _redis(port, "GET", "xds:run") == b"$1\r\na\r\n"  # the routes from RDS stay
        found = process.wait_for_line(r"listener other on 127\.0\.0\.1:(\d+)", start=mark)
        other = int(found.group(1))
        wait_until(lambda: any("other-routes" in r.resource_names for r in plane.requests))
        wait_until(lambda: _redis(other, "GET", "xds:run") == b"$1\r\na\r\n", message="other")

        _acked(plane, plane.push(ENDPOINT_TYPE, "2", [assignment("cache", [redis_port_b])]))
        assert _redis(port, "GET", "xds:run") == b"$1\r\nb\r\n"
    finally:
        process.stop()


def test_run_says_which_extra_an_xds_config_needs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = parse_config({
        "xds": {"address": "127.0.0.1:1", "node": {"id": "n"}},
        "listeners": [{"name": "r", "address": "127.0.0.1:0", "codec": "redis",
                       "routes": {"rds": "r"}}],
    })  # fmt: skip
    assert xds_problems(config) == []
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if grpcio were not installed
    assert xds_problems(config) == [XDS_EXTRA_HINT]
    without = parse_config({"listeners": [{"name": "r", "address": "127.0.0.1:0",
                                           "codec": "redis"}]})  # fmt: skip
    assert xds_problems(without) == []
