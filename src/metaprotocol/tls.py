"""TLS for the adapters: ``ssl.SSLContext`` objects built from listener and cluster settings.

TLS is an IO concern, so the core never sees it. Each adapter terminates TLS on the
connections a TLS listener accepts and tells the core about a connection only once its
handshake succeeded (a failed one is counted in ``downstream_cx_ssl_handshake_error`` and
closed); it originates TLS to the endpoints of a cluster with ``tls`` and reports
``UpstreamConnected`` only after the handshake, a failed handshake being an
``UpstreamConnectFailed`` (so error replies, retries and outlier ejection apply as for any
connect failure). ``TlsContexts`` holds a running proxy's contexts; an adapter builds a new
one on every reload, which reads the certificate files again: new handshakes use the new
certificates, established connections keep theirs. docs/configuration.md describes the keys.
"""

from __future__ import annotations

import logging
import ssl

from metaprotocol.core.codec import DeclaresAlpn
from metaprotocol.core.config import ClusterTls, Config, ListenerTls, TlsVersion
from metaprotocol.core.stats import Stats

__all__ = [
    "HANDSHAKE_ERROR",
    "HANDSHAKE_TIMEOUT",
    "TlsContexts",
    "TlsError",
    "client_context",
    "codec_alpn",
    "count_handshake_error",
    "server_context",
    "server_hostname",
]

log = logging.getLogger("metaprotocol")

# A client gets this long to complete its handshake (a plaintext client that sends nothing
# is closed after it); upstream handshakes are bounded by the cluster's connect_timeout.
HANDSHAKE_TIMEOUT = 10.0
HANDSHAKE_ERROR = "downstream_cx_ssl_handshake_error"

_VERSIONS: dict[TlsVersion, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TlsError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file."""


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsError(
            f"cannot load cert_file {cert_file!r} with key_file {key_file!r}: {reason}"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, key: str, ca_file: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsError(f"cannot load {key} {ca_file!r}: {reason}") from exc


def server_context(tls: ListenerTls, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A listener's context: its certificate, the minimum version, client certificates
    required and verified when ``client_ca_file`` is set, and ``alpn`` offered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    _load_chain(ctx, tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        _load_ca(ctx, "client_ca_file", tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(tls: ClusterTls) -> ssl.SSLContext:
    """A cluster's context: the server verified against ``ca_file`` (or the system store)
    unless ``verify`` is false; the proxy's own certificate when one is configured."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.ca_file is not None:
        _load_ca(ctx, "ca_file", tls.ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None and tls.key_file is not None:
        _load_chain(ctx, tls.cert_file, tls.key_file)
    return ctx


def server_hostname(tls: ClusterTls, host: str) -> str:
    """The name an upstream handshake sends (SNI) and checks: ``server_name``, else the
    endpoint's host (an IP address is checked against the certificate's IP entries)."""
    return tls.server_name or host


def codec_alpn(codec: str) -> tuple[str, ...]:
    """The ALPN ids the codec registered as ``codec`` declares (none for an unknown one)."""
    from metaprotocol.codecs.registry import get_codec

    try:
        factory: object = get_codec(codec)
    except (LookupError, ImportError, AttributeError):
        return ()
    return tuple(factory.alpn_protocols) if isinstance(factory, DeclaresAlpn) else ()


def count_handshake_error(stats: Stats, listener: str, reason: object) -> None:
    """Count (and log at debug level) a client whose TLS handshake failed."""
    stats.inc(HANDSHAKE_ERROR, (("listener", listener),))
    log.debug("listener %s: TLS handshake failed: %s", listener, reason)


class TlsContexts:
    """The contexts of a running proxy: one per TLS listener, one per cluster TLS setting.

    Built from a config (reading every file: raises ``TlsError`` naming the bad one), so a
    reload builds a new one first and swaps it in only when everything loaded.
    """

    __slots__ = ("_listeners", "_upstreams")

    def __init__(self, config: Config | None) -> None:
        self._listeners: dict[str, ssl.SSLContext] = {}
        self._upstreams: dict[ClusterTls, ssl.SSLContext] = {}
        if config is None:
            return
        for listener in config.listeners:
            if listener.tls is not None:
                alpn = codec_alpn(listener.codec)
                self._listeners[listener.name] = server_context(listener.tls, alpn)
        for cluster in config.clusters:
            if cluster.tls is not None and cluster.tls not in self._upstreams:
                self._upstreams[cluster.tls] = client_context(cluster.tls)

    def listener(self, name: str) -> ssl.SSLContext | None:
        """The context for connections accepted on listener ``name``; None: plaintext."""
        return self._listeners.get(name)

    def upstream(self, tls: ClusterTls) -> ssl.SSLContext:
        """The context for an upstream connection with ``tls`` (built now for a setting the
        current config no longer has: a pool opened before a reload). Raises ``TlsError``."""
        ctx = self._upstreams.get(tls)
        if ctx is None:
            ctx = self._upstreams[tls] = client_context(tls)
        return ctx
