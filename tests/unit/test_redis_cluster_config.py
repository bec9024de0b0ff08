"""A cluster's ``redis_cluster`` block: defaults, values, errors named by path, who may route
to it, and what /config_dump shows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metaprotocol.admin import AdminApp
from metaprotocol.configfile import ConfigError, parse_config
from metaprotocol.core.config import (
    DEFAULT_REDIS_CLUSTER_REFRESH_INTERVAL,
    RedisClusterConfig,
)
from metaprotocol.core.stats import Stats


def _data(redis_cluster: object, codec: str = "redis", **cluster: Any) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "front", "address": "127.0.0.1:0", "codec": codec,
             "routes": [{"name": "all", "route": {"cluster": "rc"}}]},
        ],
        "clusters": [
            {"name": "rc", "endpoints": ["127.0.0.1:7000", "127.0.0.1:7001"],
             "redis_cluster": redis_cluster, **cluster},
            {"name": "plain", "endpoints": ["127.0.0.1:6379"]},
        ],
    }  # fmt: skip


def _errors(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_defaults_and_values() -> None:
    config = parse_config(_data({}))
    assert config.clusters[0].redis_cluster == RedisClusterConfig()
    assert RedisClusterConfig().refresh_interval == DEFAULT_REDIS_CLUSTER_REFRESH_INTERVAL == 30.0
    assert RedisClusterConfig().read_from == "primary"
    assert config.clusters[1].redis_cluster is None
    config = parse_config(_data({"refresh_interval": "5s", "read_from": "replica_preferred"}))
    assert config.clusters[0].redis_cluster == RedisClusterConfig(5.0, "replica_preferred")


BLOCK = "clusters[0].redis_cluster"


@pytest.mark.parametrize(
    ("block", "extra", "message"),
    [
        ({"refresh_interval": "0s"}, {}, f"{BLOCK}.refresh_interval: must be > 0"),
        ({"refresh_interval": "soon"}, {}, f"{BLOCK}.refresh_interval: expected a duration"),
        (
            {"read_from": "replica"},
            {},
            f"{BLOCK}.read_from: expected one of primary, replica_preferred, got 'replica'",
        ),
        ({"refresh": "1s"}, {}, f"{BLOCK}.refresh: unknown key"),
        ([], {}, f"{BLOCK}: expected a mapping, got a list"),
        ({}, {"lb_policy": "ring_hash"}, "clusters[0].lb_policy: does not apply to a redis_"),
    ],
)
def test_bad_blocks_are_named_by_path(block: object, extra: dict[str, Any], message: str) -> None:
    assert message in _errors(_data(block, **extra))


def test_only_redis_listeners_may_route_to_a_redis_cluster() -> None:
    message = _errors(_data({}, codec="http1"))
    assert (
        "clusters[0].redis_cluster: listener 'front' routes to this cluster with codec "
        "'http1'; a Redis Cluster needs the redis codec"
    ) in message


def test_config_dump_shows_the_block() -> None:
    config = parse_config(_data({"refresh_interval": "10s", "read_from": "replica_preferred"}))
    app = AdminApp(ready=lambda: True, snapshot=Stats().snapshot, config_raw=lambda: config.raw)
    status, _, body = app.respond("GET", "/config_dump")
    assert status == 200
    dumped = json.loads(body)
    assert dumped["clusters"][0]["redis_cluster"] == {
        "refresh_interval": "10s",
        "read_from": "replica_preferred",
    }
