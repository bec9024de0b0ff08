"""Input events: what happened, in the past tense. Adapters feed them to ``Proxy.handle``.

Every event names a connection by a plain int id. Downstream connection ids are
chosen by the adapter on accept; upstream ids are chosen by the core in
``OpenUpstream`` and echoed back by the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metaprotocol.codecs.redis.cluster import SlotMap
from metaprotocol.core.config import Endpoint

__all__ = [
    "Accepted",
    "Closed",
    "DataReceived",
    "EndpointsChanged",
    "EofReceived",
    "Event",
    "ExternalCallCompleted",
    "SlotMapChanged",
    "TimePassed",
    "UpstreamConnectFailed",
    "UpstreamConnected",
    "WriteBufferGrew",
    "WriteBufferHigh",
    "WriteBufferLow",
]


@dataclass(frozen=True, slots=True)
class Accepted:
    """A downstream connection was accepted on the listener named ``listener``."""

    conn: int
    listener: str
    peer: str = ""


@dataclass(frozen=True, slots=True)
class DataReceived:
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EofReceived:
    """The peer half-closed its sending side."""

    conn: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is gone (peer reset, or our close completed). ``error`` is a hint."""

    conn: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    conn: int


@dataclass(frozen=True, slots=True)
class UpstreamConnectFailed:
    conn: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class WriteBufferHigh:
    """The adapter's write buffer for ``conn`` rose above its high watermark."""

    conn: int


@dataclass(frozen=True, slots=True)
class WriteBufferGrew:
    """The adapter's write buffer for ``conn`` holds ``size`` bytes after a write to it.

    Adapters report it after every write made while the buffer is above its high watermark
    (between ``WriteBufferHigh`` and ``WriteBufferLow``): a fact, not a verdict. The core
    compares it with the listener's ``output_buffer_limit`` and closes the connection above it.
    """

    conn: int
    size: int


@dataclass(frozen=True, slots=True)
class WriteBufferLow:
    """The adapter's write buffer for ``conn`` fell below its low watermark."""

    conn: int


@dataclass(frozen=True, slots=True)
class ExternalCallCompleted:
    """An ``ExternalCall`` finished. ``result`` is call-specific; ``error`` set means it failed."""

    call: int
    result: Any = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class SlotMapChanged:
    """A Redis Cluster's slot map was fetched (``redis_cluster``: at start, every
    ``refresh_interval`` and when the core asked with ``RefreshSlotMap``): requests to
    ``cluster`` go to the nodes it names from now on."""

    cluster: str
    slot_map: SlotMap


@dataclass(frozen=True, slots=True)
class EndpointsChanged:
    """Discovery (DNS) found a new endpoint set for ``cluster``: connections to endpoints
    that remain are kept, removed endpoints take no new requests and their connections
    close once their requests are answered."""

    cluster: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class TimePassed:
    """Time moved on; the ``now`` passed to ``handle`` is what matters."""


Event = (
    Accepted
    | DataReceived
    | EofReceived
    | Closed
    | UpstreamConnected
    | UpstreamConnectFailed
    | WriteBufferHigh
    | WriteBufferGrew
    | WriteBufferLow
    | ExternalCallCompleted
    | SlotMapChanged
    | EndpointsChanged
    | TimePassed
)
