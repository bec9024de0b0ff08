"""The top-level ``xds`` block and listeners' ``routes: {rds: NAME}``: shape and values.

``xds: {address, node: {id, cluster}, tls, resources: {clusters, routes}}`` says where the
xDS control plane is (docs/configuration.md, "xDS"). The checker validates it with every
error path-named; ``xds_settings(config)`` reads it back from a validated config's ``raw``
for the ``metaprotocol.xds`` client, and ``rds_routes(config)`` names the route
configuration each listener takes from RDS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metaprotocol.configfile.tls import cluster_tls
from metaprotocol.configfile.values import ConfigError, Reader, join_path
from metaprotocol.core.config import ClusterTls, Config

__all__ = [
    "XDS_KEYS",
    "XdsSettings",
    "rds_routes",
    "read_rds_name",
    "read_xds",
    "xds_settings",
]

XDS_KEYS = ("address", "node", "tls", "resources")
_NODE_KEYS = ("id", "cluster")
_RESOURCE_KEYS = ("clusters", "routes")


@dataclass(frozen=True, slots=True)
class XdsSettings:
    """Where the control plane is and what to ask it for.

    ``clusters`` empty subscribes to every cluster (a wildcard CDS request); ``routes``
    are RDS route configurations asked for on top of those the listeners name.
    """

    host: str
    port: int
    node_id: str
    node_cluster: str = ""
    tls: ClusterTls | None = None
    clusters: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


def read_xds(reader: Reader, value: object, path: str) -> XdsSettings | None:
    """``xds``: ``address`` and ``node.id`` are required."""
    m = reader.mapping(value, path, XDS_KEYS, required=("address", "node"))
    if m is None:
        return None
    errors = len(reader.errors)
    address = reader.optional(m, "address", path, reader.address)
    node_id, node_cluster = "", ""
    node = reader.optional(m, "node", path, lambda v, p: reader.mapping(v, p, _NODE_KEYS, ("id",)))
    if node is not None:
        node_path = join_path(path, "node")
        node_id = reader.field(node, "id", node_path, reader.string, "")
        node_cluster = reader.field(node, "cluster", node_path, reader.string, "")
    tls = reader.optional(m, "tls", path, lambda v, p: cluster_tls(reader, v, p))
    if tls is not None and not tls.verify:
        reader.error(
            join_path(join_path(path, "tls"), "verify"), "the control plane is always verified"
        )
    clusters: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    resources = reader.optional(
        m, "resources", path, lambda v, p: reader.mapping(v, p, _RESOURCE_KEYS)
    )
    if resources is not None:
        rp = join_path(path, "resources")
        clusters = reader.optional(resources, "clusters", rp, reader.strings) or ()
        routes = reader.optional(resources, "routes", rp, reader.strings) or ()
    if address is None or len(reader.errors) > errors:
        return None
    return XdsSettings(address[0], address[1], node_id, node_cluster, tls, clusters, routes)


def read_rds_name(reader: Reader, value: object, path: str) -> str | None:
    """A listener's ``routes: {rds: NAME}``."""
    m = reader.mapping(value, path, ("rds",), required=("rds",))
    return None if m is None else reader.optional(m, "rds", path, reader.string)


def xds_settings(config: Config) -> XdsSettings | None:
    """The validated ``xds`` block of ``config`` (None when it has none)."""
    raw = config.raw.get("xds")
    if raw is None:
        return None
    reader = Reader("xds")
    settings = read_xds(reader, raw, "xds")
    if reader.errors:  # the checker saw these already; a hand-built raw may not have been
        raise ConfigError(reader.errors)
    return settings


def rds_routes(config: Config) -> dict[str, str]:
    """Listener name -> the RDS route configuration it serves (``routes: {rds: NAME}``)."""
    result: dict[str, str] = {}
    listeners = config.raw.get("listeners")
    for item in listeners if isinstance(listeners, list) else ():
        if not isinstance(item, Mapping):
            continue
        routes: Any = item.get("routes")
        if isinstance(routes, Mapping) and isinstance(routes.get("rds"), str):
            result[str(item.get("name"))] = routes["rds"]
    return result
