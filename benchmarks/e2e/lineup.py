"""Which targets each group of the end-to-end benchmark starts, and its upstream servers.

A factory starts one target in front of an upstream port: metaprotocol on each adapter (and
the compiled build's, ``compiled = (python, adapters)``), the peers the group compares it
with, and the raw forwarders.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from . import targets
from .procs import Proc, Procs, free_port
from .targets import Target

__all__ = [
    "CODEC",
    "NO_TLS",
    "Factory",
    "factories",
    "shard_factories",
    "start_upstream",
    "tls_factories",
]

# rloop has no TLS (its loop's create_server does not take ssl=): not in the TLS groups.
NO_TLS = ("rloop",)

CODEC = {
    "redis": "redis",
    "redis-tls": "redis",
    "http": "http1",
    "http-tls": "http1",
    "thrift": "thrift",
    "dubbo": "dubbo",
    "redis-shards": "redis",
}

Factory = Callable[[Procs, int], Target]  # (procs, upstream port) -> started target


def _start_metaprotocol(adapter: str, codec: str, procs: Procs, upstream: int) -> Target:
    return targets.start_metaprotocol(procs, adapter, codec, upstream)


def _start_no_observe(codec: str, procs: Procs, upstream: int) -> Target:
    return targets.start_metaprotocol(
        procs, "uvloop", codec, upstream, label="-noobserve", launcher_flags=("--no-observe",)
    )


def _start_compiled(python: str, adapter: str, codec: str, procs: Procs, upstream: int) -> Target:
    return targets.start_metaprotocol(procs, adapter, codec, upstream, python=python)


def _start_tls(
    codec: str,
    adapter: str,
    tls: targets.TlsFiles,
    python: str | None,
    procs: Procs,
    upstream: int,
) -> Target:
    extra = f"    tls: {{cert_file: {tls.cert}, key_file: {tls.key}}}\n"
    return targets.start_metaprotocol(procs, adapter, codec, upstream, extra=extra, python=python)


def tls_factories(
    group: str,
    adapters: tuple[str, ...],
    tls: targets.TlsFiles,
    compiled: tuple[str, tuple[str, ...]] | None,
) -> list[tuple[str, Factory]]:
    """TLS termination: metaprotocol on each adapter (and the compiled build's) and haproxy
    (mode tcp for Redis, http for HTTP), all with ``ssl`` on the listener."""
    codec = CODEC[group]
    out: list[tuple[str, Factory]] = [
        (f"metaprotocol/{a}", partial(_start_tls, codec, a, tls, None))
        for a in adapters
        if a not in NO_TLS
    ]
    if compiled is not None:
        python, compiled_adapters = compiled
        out += [
            (f"metaprotocol[mypyc]/{a}", partial(_start_tls, codec, a, tls, python))
            for a in compiled_adapters
            if a not in NO_TLS
        ]
    mode = "http" if codec == "http1" else "tcp"
    out.append((f"haproxy-{mode}-tls", lambda p, u: targets.start_haproxy(p, mode, u, tls=tls)))
    return out


def factories(
    group: str,
    adapters: tuple[str, ...],
    experiments: bool = False,
    compiled: tuple[str, tuple[str, ...]] | None = None,
) -> list[tuple[str, Factory]]:
    codec = CODEC[group]
    out: list[tuple[str, Factory]] = [
        (f"metaprotocol/{a}", partial(_start_metaprotocol, a, codec)) for a in adapters
    ]
    if compiled is not None:  # the mypyc build, side by side in the same rounds
        python, compiled_adapters = compiled
        out += [
            (f"metaprotocol[mypyc]/{a}", partial(_start_compiled, python, a, codec))
            for a in compiled_adapters
        ]
    if experiments:  # the engine without observer events: what that option would save
        out.append(("metaprotocol/uvloop-noobserve", partial(_start_no_observe, codec)))
    if group == "redis":
        out.append(("twemproxy", targets.start_twemproxy))
    if group == "http":
        out.append(("haproxy-http", lambda p, u: targets.start_haproxy(p, "http", u)))
    out.append(("haproxy-tcp", lambda p, u: targets.start_haproxy(p, "tcp", u)))
    if group in ("redis", "http"):
        out.append(("nginx-stream", targets.start_nginx_stream))
    if group == "http":
        out.append(("mitmdump", targets.start_mitmdump))
    out.append(("rawfwd/uvloop", lambda p, u: targets.start_rawfwd(p, "uvloop", u)))
    out.append(("rawfwd/asyncio", lambda p, u: targets.start_rawfwd(p, "asyncio", u)))
    if "rloop" in adapters:  # the same forwarder on rloop: its loop's own cost per request
        out.append(("rawfwd/rloop", lambda p, u: targets.start_rawfwd(p, "rloop", u)))
    return out


def start_upstream(group: str, procs: Procs) -> tuple[list[int], list[Proc]]:
    """The group's upstream server(s), their ports and processes (``redis-shards``: three
    redis-servers; the other groups one server)."""
    port = free_port()
    if group in ("redis", "redis-tls"):
        return [port], [targets.start_redis(procs, port)]
    if group == "redis-shards":
        ports = [port, free_port(), free_port()]
        return ports, [targets.start_redis(procs, p) for p in ports]
    if group in ("http", "http-tls"):
        return [port], [targets.start_nginx_http(procs, port)]
    return [port], [targets.start_canned(procs, group, port)]


def _start_shards(adapter: str, ports: list[int], procs: Procs, upstream: int) -> Target:
    return targets.start_metaprotocol(procs, adapter, "redis-shards", upstream, shards=ports)


def _start_shards_compiled(
    python: str, adapter: str, ports: list[int], procs: Procs, upstream: int
) -> Target:
    return targets.start_metaprotocol(
        procs, adapter, "redis-shards", upstream, shards=ports, python=python
    )


def shard_factories(
    adapters: tuple[str, ...], ports: list[int], compiled: tuple[str, tuple[str, ...]] | None
) -> list[tuple[str, Factory]]:
    """Three Redis shards behind metaprotocol (``ring_hash`` on the key) and twemproxy."""
    out: list[tuple[str, Factory]] = [
        (f"metaprotocol/{a}", partial(_start_shards, a, ports)) for a in adapters
    ]
    if compiled is not None:
        python, compiled_adapters = compiled
        out += [
            (f"metaprotocol[mypyc]/{a}", partial(_start_shards_compiled, python, a, ports))
            for a in compiled_adapters
        ]
    out.append(("twemproxy", lambda p, u: targets.start_twemproxy(p, u, shards=ports)))
    return out
