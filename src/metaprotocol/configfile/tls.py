"""The ``tls`` blocks of listeners and clusters: shape, files that exist, and files that load."""

from __future__ import annotations

import os

from metaprotocol.configfile.values import Reader, describe, join_path
from metaprotocol.core.config import ClusterTls, ListenerTls, TlsVersion
from metaprotocol.tls import TlsError, client_context, server_context

__all__ = ["CLUSTER_TLS_KEYS", "LISTENER_TLS_KEYS", "MIN_VERSIONS", "cluster_tls", "listener_tls"]

LISTENER_TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "min_version")
CLUSTER_TLS_KEYS = ("ca_file", "cert_file", "key_file", "server_name", "verify")
MIN_VERSIONS: tuple[TlsVersion, ...] = ("1.2", "1.3")


def _file(reader: Reader, value: object, path: str) -> str | None:
    """A path to a readable file (relative paths are relative to the working directory)."""
    name = reader.string(value, path)
    if name is None:
        return None
    if not os.path.isfile(name):
        reader.error(path, f"no such file: {name!r}")
        return None
    if not os.access(name, os.R_OK):
        reader.error(path, f"file not readable: {name!r}")
        return None
    return name


def _min_version(reader: Reader, value: object, path: str) -> TlsVersion | None:
    # YAML reads an unquoted 1.2 as a number: take it as the version it spells.
    if isinstance(value, float) and str(value) in MIN_VERSIONS:
        value = str(value)
    if isinstance(value, str) and value in MIN_VERSIONS:
        return value
    reader.error(path, f'expected "1.2" or "1.3", got {describe(value)}')
    return None


def listener_tls(reader: Reader, value: object, path: str) -> ListenerTls | None:
    """``listeners[i].tls``: the certificate and key are required; the files must load."""
    m = reader.mapping(value, path, LISTENER_TLS_KEYS, required=("cert_file", "key_file"))
    if m is None:
        return None
    errors = len(reader.errors)
    cert = reader.optional(m, "cert_file", path, lambda v, p: _file(reader, v, p))
    key = reader.optional(m, "key_file", path, lambda v, p: _file(reader, v, p))
    ca = reader.optional(m, "client_ca_file", path, lambda v, p: _file(reader, v, p))
    default: TlsVersion = "1.2"
    version = reader.field(m, "min_version", path, lambda v, p: _min_version(reader, v, p), default)
    if cert is None or key is None or len(reader.errors) > errors:
        return None
    tls = ListenerTls(cert, key, ca, version)
    try:
        server_context(tls)
    except TlsError as exc:
        reader.error(path, str(exc))
        return None
    return tls


def cluster_tls(reader: Reader, value: object, path: str) -> ClusterTls | None:
    """``clusters[i].tls``: every key optional (``{}`` is TLS verified by the system store);
    ``cert_file`` and ``key_file`` come together; the files must load."""
    m = reader.mapping(value, path, CLUSTER_TLS_KEYS)
    if m is None:
        return None
    errors = len(reader.errors)
    ca = reader.optional(m, "ca_file", path, lambda v, p: _file(reader, v, p))
    cert = reader.optional(m, "cert_file", path, lambda v, p: _file(reader, v, p))
    key = reader.optional(m, "key_file", path, lambda v, p: _file(reader, v, p))
    name = reader.optional(m, "server_name", path, reader.string)
    verify = reader.field(m, "verify", path, reader.boolean, True)
    for have, missing in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if m.get(have) is not None and m.get(missing) is None:
            reader.error(join_path(path, missing), f"required with {have}")
    if len(reader.errors) > errors:
        return None
    tls = ClusterTls(ca, cert, key, name, verify)
    try:
        client_context(tls)
    except TlsError as exc:
        reader.error(path, str(exc))
        return None
    return tls
