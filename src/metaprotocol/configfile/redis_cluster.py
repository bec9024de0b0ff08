"""Reading a cluster's ``redis_cluster`` block, and checking who may route to such a cluster."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from metaprotocol.configfile.values import Reader, join_path
from metaprotocol.core.codec import CodecFactory
from metaprotocol.core.config import (
    DEFAULT_REDIS_CLUSTER_REFRESH_INTERVAL,
    ClusterConfig,
    ListenerConfig,
    ReadFrom,
    RedisClusterConfig,
)

__all__ = [
    "READ_FROM",
    "REDIS_CLUSTER_KEYS",
    "check_redis_cluster_listeners",
    "read_redis_cluster",
]

READ_FROM: tuple[ReadFrom, ...] = ("primary", "replica_preferred")
REDIS_CLUSTER_KEYS = ("refresh_interval", "read_from")


def read_redis_cluster(
    reader: Reader, cluster: Mapping[str, Any], value: object, path: str
) -> RedisClusterConfig | None:
    """``redis_cluster: {refresh_interval, read_from}`` (``{}``: the defaults) of the
    cluster mapping ``cluster`` at ``path``'s parent. A cluster's ``lb_policy`` does not
    apply to a Redis Cluster (the key's slot picks the node), so naming one is an error."""
    m = reader.mapping(value, path, REDIS_CLUSTER_KEYS)
    if m is None:
        return None
    if cluster.get("lb_policy") is not None:
        parent = path.rpartition(".")[0]
        reader.error(
            join_path(parent, "lb_policy"),
            "does not apply to a redis_cluster (the key's slot picks the node): remove it",
        )
    read_from = cast("ReadFrom", reader.field(m, "read_from", path, _choice(reader), "primary"))
    return RedisClusterConfig(
        refresh_interval=reader.field(
            m,
            "refresh_interval",
            path,
            reader.positive_duration,
            DEFAULT_REDIS_CLUSTER_REFRESH_INTERVAL,
        ),
        read_from=read_from,
    )


def _choice(reader: Reader) -> Callable[[object, str], str | None]:
    return lambda value, path: reader.choice(value, path, READ_FROM)


def check_redis_cluster_listeners(
    reader: Reader,
    listeners: tuple[ListenerConfig, ...],
    clusters: tuple[ClusterConfig, ...],
    lookup_codec: Callable[[str], CodecFactory],
    cluster_names: Callable[[ListenerConfig], set[str]],
) -> None:
    """A Redis Cluster speaks RESP: only listeners of the ``redis`` codec (or a codec
    derived from it) may route or mirror to one."""
    from metaprotocol.codecs.redis import RedisCodec

    redis_clusters = {c.name: i for i, c in enumerate(clusters) if c.redis_cluster is not None}
    if not redis_clusters:
        return
    for listener in listeners:
        if not listener.codec:
            continue
        try:
            factory = lookup_codec(listener.codec)
        except Exception:  # reported where the listener names its codec
            continue
        if isinstance(factory, type) and issubclass(factory, RedisCodec):
            continue
        for name in sorted(cluster_names(listener) & set(redis_clusters)):
            reader.error(
                f"clusters[{redis_clusters[name]}].redis_cluster",
                f"listener {listener.name!r} routes to this cluster with codec "
                f"{listener.codec!r}; a Redis Cluster needs the redis codec",
            )
