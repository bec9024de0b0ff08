"""Redis Cluster's control plane, pure: the slot map, its sources, and redirections.

- :class:`SlotMap` says which shard (a primary and its replicas) owns each of the 16384
  slots. It is built from a ``CLUSTER SHARDS`` reply (Redis 7+,
  https://redis.io/docs/latest/commands/cluster-shards/) or a ``CLUSTER SLOTS`` reply (older
  servers, https://redis.io/docs/latest/commands/cluster-slots/), in RESP2 or RESP3.
- A node's address is its *preferred endpoint*: an empty endpoint means "the host you asked"
  (``asked_host``), ``?`` an unknown one (such a node is left out: it cannot be reached).
- :func:`parse_redirect` reads ``-MOVED <slot> <endpoint>:<port>`` and ``-ASK ...`` error
  replies (cluster spec, "Redirection and resharding"); after ``ASK`` the client sends
  :data:`ASKING` right before the command, on the same connection, and drops its ``+OK``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from metaprotocol.codecs.redis.slots import SLOT_COUNT
from metaprotocol.codecs.redis.values import RespError, RespValue, read_value
from metaprotocol.core.message import ErrorType, ProtocolError

__all__ = [
    "ASKING",
    "ASKING_REPLY",
    "CLUSTER_SHARDS",
    "CLUSTER_SLOTS",
    "ClusterNode",
    "Redirect",
    "Shard",
    "SlotMap",
    "parse_cluster_shards",
    "parse_cluster_slots",
    "parse_redirect",
    "ranges_of",
    "slot_map_from_reply",
]

ASKING: Final = b"*1\r\n$6\r\nASKING\r\n"
"""Sent right before a command redirected by ``-ASK``, on the same connection."""
ASKING_REPLY: Final = b"+OK\r\n"
"""What the server answers to :data:`ASKING` (the proxy drops it)."""
CLUSTER_SHARDS: Final = b"*2\r\n$7\r\nCLUSTER\r\n$6\r\nSHARDS\r\n"
CLUSTER_SLOTS: Final = b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n"

_UNKNOWN_ENDPOINT: Final = "?"


def _bad(message: str) -> ProtocolError:
    return ProtocolError(f"bad cluster reply: {message}", ErrorType.BAD_RESPONSE)


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node as the cluster describes it. ``healthy`` is false for a node CLUSTER SHARDS
    reports ``failed`` or ``loading`` (CLUSTER SLOTS does not say: always true)."""

    host: str
    port: int
    node_id: str = ""
    healthy: bool = True

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Shard:
    """A primary, its replicas and the slot ranges (inclusive) they serve."""

    ranges: tuple[tuple[int, int], ...]
    primary: ClusterNode | None  # None while a failover has no primary to report
    replicas: tuple[ClusterNode, ...] = ()

    def node(self, prefer_replica: bool) -> ClusterNode | None:
        """Where a request goes: the primary, or with ``prefer_replica``
        (``read_from: replica_preferred``, for reads) the first healthy replica if any."""
        if prefer_replica:
            for replica in self.replicas:
                if replica.healthy:
                    return replica
        return self.primary


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which shard owns each slot. Slots no shard claims are ``uncovered`` (the cluster is
    being set up or is failing): a request for one cannot be routed."""

    shards: tuple[Shard, ...]
    _owners: tuple[Shard | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        owners: list[Shard | None] = [None] * SLOT_COUNT
        for shard in self.shards:
            for start, end in shard.ranges:
                if not 0 <= start <= end < SLOT_COUNT:
                    raise _bad(f"slot range {start}-{end} outside 0-{SLOT_COUNT - 1}")
                owners[start : end + 1] = [shard] * (end + 1 - start)
        object.__setattr__(self, "_owners", tuple(owners))

    def shard(self, slot: int) -> Shard | None:
        return self._owners[slot]

    def primary(self, slot: int) -> ClusterNode | None:
        shard = self._owners[slot]
        return None if shard is None else shard.primary

    @property
    def uncovered(self) -> int:
        """How many slots no shard with a primary serves."""
        return sum(1 for shard in self._owners if shard is None or shard.primary is None)

    def nodes(self) -> tuple[ClusterNode, ...]:
        """Every node, primaries first, each once."""
        seen: dict[tuple[str, int], ClusterNode] = {}
        for shard in self.shards:
            if shard.primary is not None:
                seen.setdefault((shard.primary.host, shard.primary.port), shard.primary)
        for shard in self.shards:
            for replica in shard.replicas:
                seen.setdefault((replica.host, replica.port), replica)
        return tuple(seen.values())

    def moved(self, slot: int, host: str, port: int) -> SlotMap:
        """The map after a ``-MOVED slot host:port``: the slot now belongs to the shard whose
        primary is ``host:port`` (a new one-slot shard when that node is not a known
        primary), until the next full refresh says more."""
        target = next(
            (s for s in self.shards if s.primary is not None and
             (s.primary.host, s.primary.port) == (host, port)),
            None,
        )  # fmt: skip
        shards: list[Shard] = []
        for shard in self.shards:
            ranges = _without(shard.ranges, slot)
            if shard is target:
                ranges = tuple(sorted((*ranges, (slot, slot))))
            if ranges:
                shards.append(Shard(ranges, shard.primary, shard.replicas))
        if target is None:
            shards.append(Shard(((slot, slot),), ClusterNode(host, port)))
        return SlotMap(tuple(shards))


def _without(ranges: tuple[tuple[int, int], ...], slot: int) -> tuple[tuple[int, int], ...]:
    result: list[tuple[int, int]] = []
    for start, end in ranges:
        if start <= slot <= end:
            if start < slot:
                result.append((start, slot - 1))
            if slot < end:
                result.append((slot + 1, end))
        else:
            result.append((start, end))
    return tuple(result)


# -- replies


def _text(value: RespValue) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value
    raise _bad(f"expected a string, got {type(value).__name__}")


def _int(value: RespValue) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _bad(f"expected an integer, got {type(value).__name__}")


def _list(value: RespValue) -> list[RespValue]:
    if isinstance(value, list):
        return value
    if isinstance(value, RespError):
        raise _bad(f"error reply: {value.text}")
    raise _bad(f"expected an array, got {type(value).__name__}")


def _fields(value: RespValue) -> dict[str, RespValue]:
    """A RESP3 map, or the flat ``[key, value, ...]`` array RESP2 sends for one."""
    if isinstance(value, dict):
        return {_text(k if isinstance(k, (str, bytes)) else str(k)): v for k, v in value.items()}
    items = _list(value)
    if len(items) % 2:
        raise _bad("a key/value array of odd length")
    return {_text(items[i]): items[i + 1] for i in range(0, len(items), 2)}


def _host(endpoint: str, asked_host: str) -> str | None:
    if endpoint == _UNKNOWN_ENDPOINT:
        return None
    return endpoint or asked_host


def parse_cluster_shards(reply: RespValue, asked_host: str, tls: bool = False) -> SlotMap:
    """The slot map a ``CLUSTER SHARDS`` reply describes. With ``tls`` a node's
    ``tls-port`` is used; a node without the port needed (or with an unknown endpoint) is
    left out."""
    shards = []
    for item in _list(reply):
        shard = _fields(item)
        slots = [_int(s) for s in _list(shard.get("slots", []))]
        if len(slots) % 2:
            raise _bad("odd number of slot bounds")
        ranges = tuple((slots[i], slots[i + 1]) for i in range(0, len(slots), 2))
        primary: ClusterNode | None = None
        replicas = []
        for raw in _list(shard.get("nodes", [])):
            node = _fields(raw)
            host = _host(_text(node.get("endpoint", node.get("ip", b""))), asked_host)
            port_field = node.get("tls-port") if tls else node.get("port")
            if host is None or port_field is None:
                continue
            health = _text(node.get("health", b"online"))
            member = ClusterNode(
                host, _int(port_field), _text(node.get("id", b"")), health == "online"
            )
            if _text(node.get("role", b"")) == "master":
                primary = member
            else:
                replicas.append(member)
        if ranges or primary is not None:
            shards.append(Shard(ranges, primary, tuple(replicas)))
    return SlotMap(tuple(shards))


def parse_cluster_slots(reply: RespValue, asked_host: str) -> SlotMap:
    """The slot map a ``CLUSTER SLOTS`` reply describes: ranges served by the same primary
    form one shard."""
    by_primary: dict[tuple[str, int], tuple[list[tuple[int, int]], ClusterNode, list[ClusterNode]]]
    by_primary = {}
    orphans: list[tuple[int, int]] = []  # ranges whose primary's endpoint is unknown
    for item in _list(reply):
        entry = _list(item)
        if len(entry) < 3:
            raise _bad("a slot range without a primary")
        start, end = _int(entry[0]), _int(entry[1])
        nodes = [_slots_node(raw, asked_host) for raw in entry[2:]]
        primary = nodes[0]
        if primary is None:
            orphans.append((start, end))
            continue
        key = (primary.host, primary.port)
        if key not in by_primary:
            by_primary[key] = ([], primary, [])
        ranges, _, replicas = by_primary[key]
        ranges.append((start, end))
        for replica in nodes[1:]:
            if replica is not None and replica not in replicas:
                replicas.append(replica)
    shards = [
        Shard(tuple(sorted(ranges)), primary, tuple(replicas))
        for ranges, primary, replicas in by_primary.values()
    ]
    if orphans:
        shards.append(Shard(tuple(sorted(orphans)), None))
    return SlotMap(tuple(shards))


def _slots_node(raw: RespValue, asked_host: str) -> ClusterNode | None:
    """``[endpoint, port, id?, metadata?]`` of a CLUSTER SLOTS entry."""
    node = _list(raw)
    if len(node) < 2:
        raise _bad("a node without endpoint and port")
    host = _host(_text(node[0]), asked_host)
    if host is None:
        return None
    node_id = _text(node[2]) if len(node) > 2 else ""
    return ClusterNode(host, _int(node[1]), node_id)


def slot_map_from_reply(
    command: bytes, reply: bytes, asked_host: str, tls: bool = False
) -> SlotMap:
    """The slot map from the raw reply to :data:`CLUSTER_SHARDS` or :data:`CLUSTER_SLOTS`
    (``command``); an error reply raises ``ProtocolError(BAD_RESPONSE)`` naming it."""
    value = read_value(reply)
    if isinstance(value, RespError):
        raise _bad(f"error reply: {value.text}")
    if command == CLUSTER_SHARDS:
        return parse_cluster_shards(value, asked_host, tls)
    if command == CLUSTER_SLOTS:
        return parse_cluster_slots(value, asked_host)
    raise ValueError(f"not a slot map command: {command!r}")


# -- redirections


@dataclass(frozen=True, slots=True)
class Redirect:
    """A ``-MOVED`` (``ask`` false: the slot has moved for good, refresh the map) or
    ``-ASK`` (``ask`` true: this once, send ``ASKING`` and the command to ``host:port``)."""

    ask: bool
    slot: int
    host: str
    port: int


_REDIRECTS: Final = {b"MOVED": False, b"ASK": True}


def parse_redirect(reply: bytes, asked_host: str = "") -> Redirect | None:
    """The redirection an error reply carries (RESP2 ``-`` or RESP3 ``!``), else None.

    An empty endpoint (``-MOVED 1 :7001``) means the host of the node that answered
    (``asked_host``); an unknown one (``?``) cannot be followed: None.
    """
    if reply[:1] == b"-":
        text = reply[1:].split(b"\r\n", 1)[0]
    elif reply[:1] == b"!":
        text = reply.split(b"\r\n", 2)[1] if reply.count(b"\r\n") >= 2 else b""
    else:
        return None
    words = text.split(b" ")
    if len(words) != 3 or words[0] not in _REDIRECTS:
        return None
    host, colon, port = words[2].rpartition(b":")  # an IPv6 address holds colons too
    if not colon or not words[1].isdigit() or not port.isdigit():
        return None
    slot, number = int(words[1]), int(port)
    if slot >= SLOT_COUNT or not 0 < number < 65536:
        return None
    name = _host(host.decode("utf-8", "surrogateescape"), asked_host)
    if not name:
        return None
    return Redirect(_REDIRECTS[words[0]], slot, name, number)


def ranges_of(slots: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted slots as inclusive ranges (``[1, 2, 3, 7]`` -> ``((1, 3), (7, 7))``)."""
    result: list[list[int]] = []
    for slot in sorted(set(slots)):
        if result and result[-1][1] == slot - 1:
            result[-1][1] = slot
        else:
            result.append([slot, slot])
    return tuple((a, b) for a, b in result)
