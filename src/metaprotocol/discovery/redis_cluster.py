"""Fetching a Redis Cluster's slot map from its seed nodes (blocking, bounded in time).

``fetch_slot_map(seeds, ...)`` asks each seed in turn, until one answers: it connects
(over TLS with the cluster's ``tls``), logs in with the cluster's ``auth`` (the Redis
codec's upstream ``preamble``: ``AUTH [user] password``), sends ``CLUSTER SHARDS`` and,
when that is refused (a server before Redis 7.0), ``CLUSTER SLOTS``, and parses the reply
(codecs/redis/cluster.py). Every step of one seed shares one ``timeout``. When no seed
answers, ``SlotMapUnavailable`` names each seed and what went wrong with it.

Blocking on purpose: it runs at start and every ``redis_cluster.refresh_interval`` in a
worker thread of the adapter, never on the event loop.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence
from typing import Final

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.redis.cluster import (
    CLUSTER_SHARDS,
    CLUSTER_SLOTS,
    SlotMap,
    slot_map_from_reply,
)
from metaprotocol.core.codec import Side
from metaprotocol.core.config import ClusterConfig, ClusterTls, Endpoint
from metaprotocol.core.message import NEED_DATA, Message, ProtocolError, ResponseStatus
from metaprotocol.core.secrets import Credentials
from metaprotocol.tls import client_context, server_hostname

__all__ = [
    "DEFAULT_MAX_REPLY_SIZE",
    "SlotMapUnavailable",
    "fetch_cluster_slot_map",
    "fetch_slot_map",
]

DEFAULT_MAX_REPLY_SIZE: Final = 64 * 1024 * 1024
"""The largest slot-map reply read (a 1,000-node cluster's CLUSTER SHARDS is ~1 MB)."""


class SlotMapUnavailable(Exception):
    """No seed gave a slot map; the message names each seed and its failure."""


def fetch_cluster_slot_map(cluster: ClusterConfig, timeout: float | None = None) -> SlotMap:
    """The slot map of ``cluster`` (a cluster with ``redis_cluster``): its endpoints are the
    seeds, its ``tls`` and ``auth`` apply, ``timeout`` defaults to its ``connect_timeout``."""
    return fetch_slot_map(
        cluster.endpoints,
        timeout=cluster.connect_timeout if timeout is None else timeout,
        tls=cluster.tls,
        auth=cluster.auth,
    )


def fetch_slot_map(
    seeds: Sequence[Endpoint],
    *,
    timeout: float = 5.0,
    tls: ClusterTls | None = None,
    auth: Credentials | None = None,
    max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
) -> SlotMap:
    """The slot map from the first seed that gives one (see the module docstring)."""
    if not seeds:
        raise SlotMapUnavailable("no seed nodes")
    context = client_context(tls) if tls is not None else None
    problems = []
    for seed in seeds:
        try:
            return _ask(seed, timeout, tls, context, auth, max_reply_size)
        except (OSError, ProtocolError, SlotMapUnavailable) as exc:
            problems.append(f"{seed}: {type(exc).__name__}: {exc}")
    raise SlotMapUnavailable("no seed gave a slot map: " + "; ".join(problems))


class _Exchange:
    """One seed's connection: send a command, read its one reply, within a deadline."""

    def __init__(self, sock: socket.socket, deadline: float, max_size: int) -> None:
        self.sock = sock
        self.deadline = deadline
        self.codec = RedisCodec(Side.UPSTREAM, {}, max_size)
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        self._arm()
        self.sock.sendall(data)

    def reply(self) -> Message:
        while True:
            message = self.codec.decode(self.buffer)  # the login's answer is consumed here
            if message is not NEED_DATA:
                return message
            self._arm()
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SlotMapUnavailable("connection closed before the reply")
            self.buffer += chunk

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)


def _ask(
    seed: Endpoint,
    timeout: float,
    tls: ClusterTls | None,
    context: ssl.SSLContext | None,
    auth: Credentials | None,
    max_size: int,
) -> SlotMap:
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((seed.host, seed.port), timeout=timeout)
    try:
        if context is not None and tls is not None:
            sock = context.wrap_socket(sock, server_hostname=server_hostname(tls, seed.host))
        exchange = _Exchange(sock, deadline, max_size)
        login = exchange.codec.preamble("", auth) if auth is not None else b""
        exchange.send(login + CLUSTER_SHARDS)
        command = CLUSTER_SHARDS
        reply = exchange.reply()
        if reply.status is ResponseStatus.ERROR:  # before Redis 7.0: no CLUSTER SHARDS
            exchange.send(CLUSTER_SLOTS)
            command = CLUSTER_SLOTS
            reply = exchange.reply()
        if reply.status is ResponseStatus.ERROR:
            text = reply.frame.strip().decode("utf-8", "replace").lstrip("-!")
            raise SlotMapUnavailable(f"the node refused: {text[:200]}")
        return slot_map_from_reply(command, reply.frame, seed.host, tls is not None)
    finally:
        sock.close()
