"""Builders shared by the core's playbook tests: configs and frames of the tutorial codec."""

from __future__ import annotations

from metaprotocol.codecs.lengthprefixed import LengthPrefixedCodec, build_frame
from metaprotocol.core.codec import Ordering
from metaprotocol.core.config import (
    ClusterConfig,
    Config,
    Endpoint,
    FilterConfig,
    ListenerConfig,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
)
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing import Playbook

UP = ("10.0.0.1", 9000)


def req(rid: int, body: bytes = b"", **headers: str) -> bytes:
    return build_frame(1, rid, headers, body)


def resp(rid: int, body: bytes = b"", status: int = 0) -> bytes:
    return build_frame(2, rid, {}, body, status)


def oneway(rid: int, **headers: str) -> bytes:
    return build_frame(3, rid, headers)


def ping(rid: int) -> bytes:
    return build_frame(4, rid)


def pong(rid: int) -> bytes:
    return build_frame(5, rid)


def error_reply(rid: int, error: str, detail: str, status: int) -> bytes:
    return build_frame(2, rid, {"error": error}, detail.encode(), status)


def route(
    cluster: str = "main", name: str = "r", action: RouteAction | None = None, **exact: str
) -> RouteConfig:
    match = RouteMatch(tuple((k, StringMatcher("exact", v)) for k, v in exact.items()))
    return RouteConfig(name, action or RouteAction(cluster=cluster), match)


def config(
    routes: tuple[RouteConfig, ...] | None = None,
    clusters: tuple[ClusterConfig, ...] | None = None,
    filters: tuple[FilterConfig, ...] = (),
    codec: str = "lengthprefixed",
    **listener: object,
) -> Config:
    lc = ListenerConfig(
        "main",
        "127.0.0.1",
        0,
        codec,
        routes=routes if routes is not None else (route(),),
        filters=filters,
        **listener,  # type: ignore[arg-type]
    )
    if clusters is None:
        clusters = (ClusterConfig("main", (Endpoint(*UP),)),)
    return Config(listeners=(lc,), clusters=clusters)


def playbook(cfg: Config | None = None, *, random_values: list[float] | None = None) -> Playbook:
    values = list(random_values or [])

    def rand() -> float:
        return values.pop(0) if values else 0.0

    return Playbook(Proxy(cfg or config(), now=0.0, random=rand))


class FifoCodec(LengthPrefixedCodec):
    """The tutorial codec pretending it has no request ids: responses come back in order."""

    name = "fifo"
    ordering = Ordering.ORDERED


def fifo_playbook(cfg: Config) -> Playbook:
    return Playbook(Proxy(cfg, now=0.0, codecs={"fifo": FifoCodec}))


def cmd(*args: str) -> bytes:
    """A RESP multibulk command, as redis clients send it."""
    out = b"*%d\r\n" % len(args)
    for arg in args:
        out += b"$%d\r\n%s\r\n" % (len(arg), arg.encode())
    return out


def bulk(text: str) -> bytes:
    """A RESP bulk-string reply."""
    return b"$%d\r\n%s\r\n" % (len(text), text.encode())
