"""The codec contract: what a protocol plugs into the core (docs/architecture.md).

A codec object lives on one side of one connection. On the downstream side it
decodes requests and encodes responses and error replies; on the upstream side
it encodes requests and decodes responses. Codecs are pure: no IO, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from metaprotocol.core.message import ErrorType, Message, Mutation, NeedData, ProtocolError

if TYPE_CHECKING:
    from metaprotocol.core.config import HealthCheckRequest
    from metaprotocol.core.secrets import Credentials

__all__ = [
    "Capabilities",
    "Codec",
    "CodecFactory",
    "DeclaresAlpn",
    "DecodesAtEof",
    "DecodesMany",
    "FanOut",
    "NarrowsHashInput",
    "OpensWithPreamble",
    "Ordering",
    "PartFailed",
    "ProbesHealth",
    "ReportsReplyStatus",
    "SendsInterimReply",
    "Side",
    "SplitsRequests",
    "capabilities_of",
    "codec_failure",
]


class Side(enum.Enum):
    DOWNSTREAM = "downstream"  # faces clients: decodes requests, encodes responses
    UPSTREAM = "upstream"  # faces servers: encodes requests, decodes responses


class Ordering(enum.Enum):
    """How responses find their requests on an upstream connection."""

    MULTIPLEXED = "multiplexed"  # request ids: many requests share a connection, any order
    ORDERED = "ordered"  # no ids: FIFO pipelining, responses come back in request order
    EXCLUSIVE = "exclusive"  # one request at a time per connection


@runtime_checkable
class Codec(Protocol):
    """One side of one connection.

    Rules:
    - ``decode`` consumes exactly one message's bytes from ``buffer`` (``del
      buffer[:n]``) and returns it, or returns ``NEED_DATA`` and consumes
      nothing. Malformed bytes raise ``ProtocolError``. Any prefix of a valid
      stream gives ``NEED_DATA``, never an error.
    - ``encode`` with no mutation and ``request_id`` None returns
      ``message.frame`` itself (zero-copy pass-through), except where the protocol
      requires a proxy to change the message between hops (HTTP/1.1's
      connection-specific fields, RFC 9110 section 7.6.1; a Redis inline command, sent
      on as a RESP array).
    - ``encode_error`` builds a protocol-correct error reply for ``request``
      (None when the request could not be decoded at all); None means the
      protocol has no way to answer (the core then closes).

    Optional hooks are the small protocols below (``DecodesMany``, ``SendsInterimReply``,
    ``DecodesAtEof``, ``OpensWithPreamble``, ``ReportsReplyStatus``, ``ProbesHealth``,
    ``SplitsRequests``, ``NarrowsHashInput``): the core looks at the codec class once per
    listener (``capabilities_of``) and keeps the answer in a ``Capabilities`` record, never
    probing a codec per message.
    """

    name: ClassVar[str]
    ordering: ClassVar[Ordering]
    supports_mutation: ClassVar[bool]

    def decode(self, buffer: bytearray) -> Message | NeedData: ...

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes: ...

    def encode_error(
        self, request: Message | None, error: ErrorType, detail: str
    ) -> bytes | None: ...

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None: ...


@runtime_checkable
class DecodesMany(Protocol):
    """Optional hook: decode a pipelined run of messages as one merged message
    (``Message.count`` of them). Downstream: ``decode_many(buffer, limit, same_route)``, where
    ``same_route(first, other)`` says whether ``other`` may travel with ``first`` (see
    core/merging.py ``MergeRun``); upstream: ``decode_many(buffer, limit)`` with ``limit`` the
    answers still owed to the oldest request (at most that many are merged)."""

    decode_many: Callable[..., Message | NeedData]


@runtime_checkable
class SendsInterimReply(Protocol):
    """Optional hook: bytes to send the client while a request is still incomplete (HTTP's
    ``100 Continue``), or None; asked after each ``decode`` that returned ``NEED_DATA``."""

    def interim_reply(self) -> bytes | None: ...


@runtime_checkable
class DecodesAtEof(Protocol):
    """Optional hook: the last response of an upstream connection whose end frames it
    (HTTP/1.0 style), from what is left in ``buffer`` when the connection closes; None when
    nothing complete is there."""

    def decode_eof(self, buffer: bytearray) -> Message | None: ...


@runtime_checkable
class OpensWithPreamble(Protocol):
    """Optional hook: a codec that needs upstream connections of a kind (``variant``, e.g.
    Redis's "resp3" after ``HELLO 3``) or a login (cluster ``auth``): ``preamble`` is the first
    bytes written on a new upstream connection of that kind; the codec consumes the server's
    answer. ``variant`` is read on the downstream codec when a request is routed."""

    variant: str

    def preamble(self, variant: str, credentials: Credentials | None = None) -> bytes: ...


@runtime_checkable
class ReportsReplyStatus(Protocol):
    """Optional codec hook: the status an answer carries, in the protocol's own words, for
    the access log and tracing (only called while someone observes requests).

    ``reply`` is what the proxy sent the client for one request (the upstream's response
    or the codec's own error reply). The result is short and stable: an HTTP status code
    ("503"), a Dubbo status byte ("20"), a RESP error prefix ("ERR", "WRONGTYPE") or "OK",
    a Thrift exception type ("UNKNOWN_METHOD") or "OK"; "" when it cannot tell.
    """

    def reply_status(self, reply: bytes) -> str: ...


@runtime_checkable
class ProbesHealth(Protocol):
    """Optional hook (upstream side): an active health check's probe.

    ``probe_request`` is the bytes of one probe, written on a connection the proxy opened
    for health checking only (after the ``preamble``, if any); ``request`` says what to ask
    where the protocol can ask different things (HTTP: the path and Host; the core always
    sets ``host``: the configured one, else the endpoint's ``host:port``). The codec counts
    the probe as a request it sent, so the answer decodes like any response, and
    ``probe_ok`` judges it: True when the endpoint is healthy (Redis ``+PONG``, a Dubbo
    heartbeat answered OK, an HTTP 2xx). A codec without this hook is checked by
    connecting only.
    """

    def probe_request(self, request: HealthCheckRequest) -> bytes: ...

    def probe_ok(self, response: Message) -> bool: ...


@dataclass(frozen=True, slots=True)
class PartFailed:
    """The outcome of a fan-out part that got no answer: why (``error``: ``TIMEOUT``,
    ``UPSTREAM_RESET``, ``CONNECT_FAILURE``, ``NO_HEALTHY_UPSTREAM``, ``ROUTE_NOT_FOUND``...)
    and the core's detail, as it would have passed them to ``encode_error``."""

    error: ErrorType
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FanOut:
    """One client request as several sub-requests (``parts``) and how their outcomes
    become the client's one answer (``merge``).

    Each part is a request ``Message`` of its own (frame and properties), routed, sent,
    timed out and retried like any request. When every part has an outcome, the core
    calls ``merge(outcomes)`` once, ``outcomes[i]`` being the response ``Message`` to
    ``parts[i]`` (an error reply from the upstream is a response too) or a ``PartFailed``;
    the bytes it returns are the client's reply. ``merge`` decides how errors merge, and
    must not raise.
    """

    parts: tuple[Message, ...]
    merge: Callable[[Sequence[Message | PartFailed]], bytes]


@runtime_checkable
class SplitsRequests(Protocol):
    """Optional hook (downstream side): split a request whose keys live on different
    upstream targets (Redis ``MGET`` over shards).

    ``target(properties)`` is the core's answer to "where would a request with these
    properties go" (route match, then the cluster's hash or slot): any hashable id, equal
    for equal destinations. The codec asks it per key (properties shaped like its own
    requests', e.g. ``{"command": "MGET", "key": "a"}``) and groups the keys by target.

    - None: send the request whole, routed by its own properties (one target, or no keys).
    - ``FanOut``: the parts, one per target in first-seen order (a single part when the
      request's own properties would route it elsewhere than its keys).
    - a non-fatal ``ProtocolError(request=request)``: the command cannot be split and its
      keys span targets (Redis ``MSETNX``: a ``CROSSSLOT`` error); the core answers it with
      ``encode_error`` like any non-fatal decode error.

    The core asks only for single requests (``count == 1``), never for merged runs.
    """

    def split(
        self, request: Message, target: Callable[[Mapping[str, str]], Hashable]
    ) -> FanOut | None: ...


@runtime_checkable
class NarrowsHashInput(Protocol):
    """Optional hook: the part of a property's value that consistent hashing sees, for
    ``ring_hash`` and ``maglev`` routes' ``hash_policy`` and a split's ``target``. Redis
    returns a key's hash tag (``{user:1}:cart`` -> ``user:1``) so keys sharing a tag
    share a shard; the property itself (what routes match) is unchanged."""

    def hash_input(self, name: str, value: str) -> str: ...


class CodecFactory(Protocol):
    """A codec class: ``factory(side, options, max_message_size)`` builds one codec."""

    # Plain (not ClassVar) members: mypy never matches a ClassVar protocol member against a
    # class object, so with ClassVar here no codec class could be passed as a CodecFactory.
    name: str
    ordering: Ordering
    supports_mutation: bool

    def __call__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> Codec: ...


@runtime_checkable
class DeclaresAlpn(Protocol):
    """Optional class attribute of a codec class: the ALPN protocol ids (RFC 7301) a TLS
    listener with this codec offers, e.g. ``("http/1.1",)``. Read once, when the listener's
    TLS context is built, never per message."""

    alpn_protocols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Which optional hooks a codec class has, resolved once per listener."""

    decode_many: bool = False  # DecodesMany
    interim_reply: bool = False  # SendsInterimReply
    decode_eof: bool = False  # DecodesAtEof
    preamble: bool = False  # OpensWithPreamble
    reply_status: bool = False  # ReportsReplyStatus
    probe: bool = False  # ProbesHealth
    split: bool = False  # SplitsRequests
    hash_input: bool = False  # NarrowsHashInput


def capabilities_of(factory: CodecFactory) -> Capabilities:
    """The optional hooks ``factory``'s codecs have: the one place the core looks."""
    return Capabilities(
        decode_many=isinstance(factory, DecodesMany),
        interim_reply=isinstance(factory, SendsInterimReply),
        decode_eof=isinstance(factory, DecodesAtEof),
        preamble=hasattr(factory, "preamble"),  # ``variant`` is set per instance
        reply_status=isinstance(factory, ReportsReplyStatus),
        probe=isinstance(factory, ProbesHealth),
        split=isinstance(factory, SplitsRequests),
        hash_input=isinstance(factory, NarrowsHashInput),
    )


def codec_failure(codec: Codec, action: str, exc: Exception) -> ProtocolError:
    """What the core makes of a codec that raised something other than ``ProtocolError``
    (a bug in it): a fatal error of its stream, so the request in hand still gets its one
    answer (an internal-error reply) and the connection, whose framing can no longer be
    trusted, closes. The reply names the exception's type only, never its text."""
    return ProtocolError(
        f"{codec.name} codec failed to {action}: {type(exc).__name__}", ErrorType.UNSPECIFIED
    )
