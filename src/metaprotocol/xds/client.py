"""The ADS client: one gRPC stream to the control plane, in a thread of its own.

``XdsClient(settings, base, reload, call, stats)`` subscribes over
``envoy.service.discovery.v3.AggregatedDiscoveryService`` (state of the world) to CDS, to
EDS for the EDS clusters, and to generic-proxy RDS for the listeners with
``routes: {rds: NAME}``. Each response is translated (``translate.build_config``) over the
static ``base`` config and handed to ``reload`` (which applies it on the proxy's event loop
and returns once applied, raising when it could not be): then ACKed. A response that does
not translate, or that ``reload`` refuses, is NACKed with the error text and the running
config stays. When the stream breaks the last good config keeps serving and the client
reconnects with exponential backoff. ``call(fn)`` runs ``fn`` on the proxy's loop; the
client uses it to count ``xds_updates`` / ``xds_rejections`` (label ``type``: cds, eds,
rds) and to set the ``xds_connected`` gauge in ``stats``.

The thread owns its channel, so the same client serves the asyncio, uvloop, trio and
blocking adapters: only ``reload`` and ``call`` differ (see ``metaprotocol.runner``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.filters.network.generic_proxy.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from metaprotocol.configfile.xds import XdsSettings, rds_routes
from metaprotocol.core.config import Config
from metaprotocol.core.stats import Stats
from metaprotocol.tls import TlsError, client_context
from metaprotocol.xds.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ROUTE_TYPE,
    Resource,
    UnknownClusterError,
    XdsError,
    XdsResources,
    build_config,
    eds_name,
)

__all__ = ["SHORT_NAMES", "XdsClient"]

log = logging.getLogger("metaprotocol.xds")

SHORT_NAMES = {CLUSTER_TYPE: "cds", ENDPOINT_TYPE: "eds", ROUTE_TYPE: "rds"}
_MESSAGES: dict[str, type[Message]] = {
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
}
_INVALID_ARGUMENT = 3  # google.rpc.Code


def _name(message: Message) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(getattr(message, "name", ""))


class XdsClient:
    """Keeps the proxy's config in step with the control plane until ``stop()``."""

    def __init__(
        self,
        settings: XdsSettings,
        base: Config,
        reload: Callable[[Config], None],
        call: Callable[[Callable[[], None]], None],
        stats: Stats,
        *,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.settings = settings
        self._base = base
        self._reload = reload
        self._call = call
        self._stats = stats
        self._backoff = backoff
        self._lock = threading.Lock()  # guards _base and _accepted (the loop's rebase reads)
        self._accepted = XdsResources()
        self._versions: dict[str, str] = {}
        self._nonces: dict[str, str] = {}
        self._subscribed: dict[str, tuple[str, ...]] = {}
        self._sent: set[str] = set()  # types asked for on this stream
        # An RDS response naming clusters CDS has not brought yet: answered after the next
        # accepted CDS response (as Envoy, which warms them, would not refuse it).
        self._waiting: discovery_pb2.DiscoveryResponse | None = None
        self._stop = threading.Event()
        self._restart = threading.Event()  # a rebase changed the RDS names to ask for
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="metaprotocol-xds", daemon=True)

    # -- the proxy's side

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def rebase(self, base: Config) -> Config:
        """The config to serve when the static file changes (a SIGHUP): ``base`` with the
        accepted resources over it. Raises ``XdsError`` when they do not fit ``base``."""
        with self._lock:
            config = build_config(base, rds_routes(base), self._accepted)
            before, self._base = self._base, base
        if self._rds_names(base) != self._rds_names(before):
            # Ask again on a new stream, for the route configurations ``base`` names.
            self._restart.set()
            stream = self._stream
            if stream is not None:
                stream.cancel()
        return config

    # -- the thread

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            got_response = self._session()
            self._gauge(0)
            if self._stop.is_set():
                break
            if self._restart.is_set():
                self._restart.clear()
                log.info("xDS stream restarted for the routes of the reloaded config")
                continue
            delay = self._backoff[0] if got_response else min(delay * 2, self._backoff[1])
            log.warning("xDS stream to %s:%d lost; retrying in %.1fs", *self._target(), delay)
            self._stop.wait(delay)

    def _target(self) -> tuple[str, int]:
        return self.settings.host, self.settings.port

    def _channel(self) -> grpc.Channel:
        target = "{}:{}".format(*self._target())
        tls = self.settings.tls
        if tls is None:
            return grpc.insecure_channel(target)

        def read(name: str | None) -> bytes | None:
            if name is None:
                return None
            with open(name, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(
            read(tls.ca_file), read(tls.key_file), read(tls.cert_file)
        )
        options = (
            [] if tls.server_name is None else [("grpc.ssl_target_name_override", tls.server_name)]
        )
        return grpc.secure_channel(target, creds, options)

    def _session(self) -> bool:
        """One stream, until it breaks or ``stop()``; whether any response came."""
        outbox: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()

        def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
            while (item := outbox.get()) is not None:
                yield item

        got = False
        channel = self._channel()
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            self._stream = stub.StreamAggregatedResources(requests())
            if self._stop.is_set():
                return got
            self._nonces.clear()
            self._sent.clear()
            self._waiting = None
            with self._lock:
                base = self._base
            self._subscribe(outbox, CLUSTER_TYPE, self.settings.clusters, force=True)
            self._subscribe(outbox, ENDPOINT_TYPE, self._eds_names(self._accepted))
            self._subscribe(outbox, ROUTE_TYPE, self._rds_names(base))
            for response in self._stream:
                if not got:
                    got = True
                    self._gauge(1)
                    log.info("xDS stream to %s:%d up", *self._target())
                self._handle(response, outbox)
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                log.warning("xDS stream: %s", exc.details() if hasattr(exc, "details") else exc)
        finally:
            outbox.put(None)
            self._stream = None
            channel.close()
        return got

    def _rds_names(self, base: Config) -> tuple[str, ...]:
        return tuple(sorted(set(rds_routes(base).values()) | set(self.settings.routes)))

    @staticmethod
    def _eds_names(resources: XdsResources) -> tuple[str, ...]:
        names = set()
        for r in resources.clusters.values():
            assert isinstance(r.message, cluster_pb2.Cluster)
            if r.message.type == cluster_pb2.Cluster.EDS:
                names.add(eds_name(r.message))
        return tuple(sorted(names))

    def _request(self, type_url: str, error: str | None = None) -> discovery_pb2.DiscoveryRequest:
        node = base_pb2.Node(id=self.settings.node_id, cluster=self.settings.node_cluster)
        request = discovery_pb2.DiscoveryRequest(
            version_info=self._versions.get(type_url, ""),
            node=node,
            resource_names=self._subscribed.get(type_url, ()),
            type_url=type_url,
            response_nonce=self._nonces.get(type_url, ""),
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=error))
        return request

    def _subscribe(
        self,
        outbox: queue.Queue[discovery_pb2.DiscoveryRequest | None],
        type_url: str,
        names: tuple[str, ...],
        *,
        force: bool = False,
    ) -> None:
        """Ask for ``names`` (CDS: empty is every cluster); a no-op when nothing changed."""
        sent = type_url in self._sent
        if not force and sent and self._subscribed.get(type_url) == names:
            return
        self._subscribed[type_url] = names
        if not force and not sent and not names:
            return
        self._sent.add(type_url)
        outbox.put(self._request(type_url))

    def _handle(
        self,
        response: discovery_pb2.DiscoveryResponse,
        outbox: queue.Queue[discovery_pb2.DiscoveryRequest | None],
        *,
        may_wait: bool = True,
    ) -> None:
        type_url = response.type_url
        kind = SHORT_NAMES.get(type_url)
        self._nonces[type_url] = response.nonce
        if kind is None:
            outbox.put(self._request(type_url, f"unsupported type {type_url}"))
            return
        try:
            with self._lock:
                candidate = self._merge(self._accepted, response)
                config = build_config(self._base, rds_routes(self._base), candidate)
            _check_tls(config)
            self._reload(config)
        except UnknownClusterError as exc:
            if type_url != ROUTE_TYPE or not may_wait:
                self._reject(kind, type_url, response, str(exc), outbox)
                return
            log.info("xDS rds version %s waits for clusters: %s", response.version_info, exc)
            self._waiting = response
            return
        except Exception as exc:  # any failure keeps the running config: NACK with why
            self._reject(kind, type_url, response, str(exc) or type(exc).__name__, outbox)
            return
        with self._lock:
            self._accepted = candidate
        self._versions[type_url] = response.version_info
        self._count("xds_updates", kind)
        log.info("xDS %s version %s applied", kind, response.version_info)
        outbox.put(self._request(type_url))
        if type_url == ROUTE_TYPE:
            self._waiting = None  # superseded
        if type_url == CLUSTER_TYPE:
            self._subscribe(outbox, ENDPOINT_TYPE, self._eds_names(candidate))
            waiting, self._waiting = self._waiting, None
            if waiting is not None:
                self._handle(waiting, outbox, may_wait=False)

    def _reject(
        self,
        kind: str,
        type_url: str,
        response: discovery_pb2.DiscoveryResponse,
        text: str,
        outbox: queue.Queue[discovery_pb2.DiscoveryRequest | None],
    ) -> None:
        log.warning("xDS %s version %s rejected: %s", kind, response.version_info, text)
        self._count("xds_rejections", kind)
        outbox.put(self._request(type_url, text))

    @staticmethod
    def _merge(accepted: XdsResources, response: discovery_pb2.DiscoveryResponse) -> XdsResources:
        """The resources with ``response`` applied: CDS replaces every cluster (state of
        the world); EDS and RDS replace the ones named in it."""
        table: dict[str, Resource] = {}
        cls = _MESSAGES[response.type_url]
        for packed in response.resources:
            if packed.type_url != response.type_url:
                raise XdsError(
                    f"a resource of type {packed.type_url} in a {response.type_url} response"
                )
            message = cls()
            try:
                message.ParseFromString(packed.value)
            except DecodeError as exc:
                raise XdsError(f"cannot decode a resource: {exc}") from None
            name = _name(message)
            if name in table:
                raise XdsError(f"resource {name!r} appears twice")
            table[name] = Resource(response.version_info, message)
        if response.type_url == CLUSTER_TYPE:
            return replace(accepted, clusters=table)
        if response.type_url == ENDPOINT_TYPE:
            return replace(accepted, endpoints={**accepted.endpoints, **table})
        return replace(accepted, routes={**accepted.routes, **table})

    def _count(self, name: str, kind: str) -> None:
        stats = self._stats
        self._call(lambda: stats.inc(name, (("type", kind),)))

    def _gauge(self, value: float) -> None:
        stats = self._stats
        try:
            self._call(lambda: stats.set_gauge("xds_connected", (), value))
        except Exception:  # the proxy is closing: nothing left to show it to
            log.debug("xds_connected not set", exc_info=True)


def _check_tls(config: Config) -> None:
    """Every cluster's TLS files load (the adapters load them again when connecting)."""
    for cluster in config.clusters:
        if cluster.tls is not None:
            try:
                client_context(cluster.tls)
            except TlsError as exc:
                raise XdsError(f"cluster {cluster.name!r}: {exc}") from None
