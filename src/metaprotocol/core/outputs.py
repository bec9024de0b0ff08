"""Outputs of ``Proxy.handle``: imperative instructions for the adapter and past-tense
observer events for tests, stats and the access log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

from metaprotocol.core.config import ClusterTls
from metaprotocol.core.message import ErrorType
from metaprotocol.core.tracing import TraceSpan

__all__ = [
    "INSTRUCTION_TYPES",
    "CloseConnection",
    "Decoded",
    "EndpointConnectFailed",
    "EndpointEjected",
    "EndpointHealthChanged",
    "ExternalCall",
    "FilterFailed",
    "Instruction",
    "LocalReplied",
    "NoRouteMatched",
    "ObserverEvent",
    "OpenUpstream",
    "Output",
    "ReadDisable",
    "ReadEnable",
    "RefreshSlotMap",
    "RequestCompleted",
    "Routed",
    "Write",
]


# -- instructions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Connect to ``host:port``; report ``UpstreamConnected(conn)`` or ``UpstreamConnectFailed``.

    With ``tls`` (the cluster's setting) the adapter reports ``UpstreamConnected`` only after
    the TLS handshake succeeded; a failed handshake is an ``UpstreamConnectFailed``."""

    conn: int
    host: str
    port: int
    tls: ClusterTls | None = None


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close ``conn``; with ``flush`` first write out what is buffered. No ``Closed`` event
    needs to follow, but one may (the core ignores events for unknown connections)."""

    conn: int
    flush: bool = True


@dataclass(frozen=True, slots=True)
class ReadDisable:
    conn: int


@dataclass(frozen=True, slots=True)
class ReadEnable:
    conn: int


@dataclass(frozen=True, slots=True)
class ExternalCall:
    """Ask the adapter to do IO for a filter (e.g. a global rate-limit lookup in Redis).
    The adapter answers with ``ExternalCallCompleted(call, result, error)``."""

    call: int
    kind: str
    payload: Any


@dataclass(frozen=True, slots=True)
class RefreshSlotMap:
    """Fetch the slot map of Redis Cluster ``cluster`` now (a node answered ``-MOVED``, or
    could not be reached), rather than at the next ``refresh_interval``. The adapter runs
    its slot-map job at once (repeated asks while one runs fold into one) and feeds the
    result as ``SlotMapChanged``."""

    cluster: str


Instruction = (
    Write
    | OpenUpstream
    | CloseConnection
    | ReadDisable
    | ReadEnable
    | ExternalCall
    | RefreshSlotMap
)

# The closed set of instruction types, derived from the union so the two cannot drift apart:
# ``isinstance(output, INSTRUCTION_TYPES)`` tells an instruction from an observer event.
INSTRUCTION_TYPES: tuple[type[Instruction], ...] = get_args(Instruction)


# -- observer events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decoded:
    conn: int
    request_id: int | None
    message_type: str
    properties: dict[str, str] = field(hash=False)


@dataclass(frozen=True, slots=True)
class Routed:
    conn: int
    route: str
    cluster: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class NoRouteMatched:
    conn: int


@dataclass(frozen=True, slots=True)
class LocalReplied:
    conn: int
    error: ErrorType
    detail: str


@dataclass(frozen=True, slots=True)
class RequestCompleted:
    """One request finished (answered, failed, abandoned, or refused by the codec); the
    access log's line and the tracing span.

    ``status`` is the outcome: "ok", "error" (an upstream error response), "local_error"
    (the proxy answered), "oneway", "abandoned" (the client went away), "reset" (a stream
    the client reset). ``wire_status`` is
    the status the client saw, in the codec's words (HTTP code, Dubbo status byte, RESP
    error prefix, Thrift exception type; "" when the codec does not say or nothing was
    sent). ``endpoint`` is the upstream host:port of the last attempt ("" if none);
    ``attempts`` how many times the request was sent upstream; ``bytes_received`` and
    ``bytes_sent`` the request's and its answer's sizes on the client connection.
    """

    conn: int
    listener: str
    route: str
    cluster: str
    endpoint: str
    status: str
    error: ErrorType | None
    duration: float
    properties: dict[str, str] = field(hash=False)
    peer: str = ""  # the client's address, as the adapter reported it on accept
    codec: str = ""
    wire_status: str = ""
    bytes_received: int = 0
    bytes_sent: int = 0
    attempts: int = 0
    span: TraceSpan | None = None  # set when tracing is on and the request was sampled


@dataclass(frozen=True, slots=True)
class EndpointConnectFailed:
    """A connection to an upstream endpoint could not be made (refused, unreachable,
    timed out) or its login was refused. Emitted whether or not observers are asked for: it
    is rare, and what an operator's log needs. ``error`` (an OS error naming the address, or
    the server's refusal of the login) goes to the log, never to clients' error replies,
    which name only the failure class; it never holds a configured secret."""

    cluster: str
    endpoint: str
    error: str


@dataclass(frozen=True, slots=True)
class EndpointEjected:
    """Outlier detection took an endpoint out of its cluster's rotation for ``duration``
    seconds (its ``ejections``-th time). Emitted like ``EndpointConnectFailed``."""

    cluster: str
    endpoint: str
    duration: float
    ejections: int


@dataclass(frozen=True, slots=True)
class EndpointHealthChanged:
    """Active health checking moved an endpoint to ``health`` (``healthy`` or
    ``unhealthy``) after ``probes`` probe results of that kind in a row. Emitted like
    ``EndpointEjected``."""

    cluster: str
    endpoint: str
    health: str
    probes: int


@dataclass(frozen=True, slots=True)
class FilterFailed:
    """A filter raised while deciding on a request of ``conn``; the request was answered with
    an internal error. Emitted whether or not observers are on, for the adapter to log: it
    carries the exception and where it happened, never the request itself."""

    conn: int
    listener: str
    filter: str
    route: str  # the route the request would take ("" if none matches)
    exception: BaseException = field(compare=False)


ObserverEvent = (
    Decoded
    | Routed
    | NoRouteMatched
    | LocalReplied
    | RequestCompleted
    | EndpointConnectFailed
    | EndpointEjected
    | EndpointHealthChanged
    | FilterFailed
)
Output = Instruction | ObserverEvent
