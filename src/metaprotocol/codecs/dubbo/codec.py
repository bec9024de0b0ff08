"""DubboCodec: the Dubbo (dubbo://) protocol codec over Hessian2, multiplexed by request id.

What it does with each frame:

- Header first: bad magic is a fatal ProtocolError as soon as the first bytes
  disagree; a declared ``16 + body_length`` above ``max_message_size`` is a
  fatal MESSAGE_TOO_LARGE as soon as the 16 header bytes are in.
- Requests (flag 0x80) with serialization id 2 (Hessian2): the body is scanned
  for the routing properties ``interface`` (service path), ``method``,
  ``version`` (service version) and every string-valued attachment under its
  lower-cased name (``group`` comes from the attachments). The body's fields
  win over same-named attachments. Arguments are skipped, never built; typed
  objects are never imported or instantiated. A malformed body is a
  non-fatal ProtocolError: the frame is consumed so the proxy can answer it
  with an error reply carrying the frame's request id.
- Other serialization ids (java, kryo, fastjson, protobuf, ...) are routed on
  the header only: the message has no properties (so only routes without
  metadata matchers apply) and is forwarded untouched. With the codec option
  ``unsupported_serialization: reject`` they are refused instead (non-fatal
  ProtocolError, answered with status 80).
- Events (flag 0x20) are HEARTBEAT messages, requests or responses; the body
  is not parsed. A two-way heartbeat request is answered with an event
  response (status 20, same id, body ``N``, or the request's own null payload
  for non-Hessian2 serializations); one-way heartbeats and heartbeat
  responses get no reply.
- Responses: status 20 is OK, any other status ERROR. Only a Hessian2
  response that carries attachments (status 20, response flag 3/4/5,
  RESPONSE_*_WITH_ATTACHMENTS) is read further: its string attachments become
  properties (lower-cased keys). Other responses are not parsed beyond the
  header; a response body that cannot be read is forwarded as is.

Mutation (supports_mutation): on Hessian2 requests the attachments map is
re-serialised (kept entries keep their bytes, an added key replaces a
same-named one in place, new keys go last) and the body length patched.
On responses, only those that already carry attachments (status 20 and
response flag 3/4/5) are rewritten. Anything else (a flag 0/1/2 response,
an error status, a heartbeat, a non-Hessian2 frame, a malformed body) makes
``encode`` raise a non-fatal ProtocolError rather than drop the mutation
silently: adding a map to a flag 0/1/2 response would need to know that the
client understands response attachments (Java: protocol 2.0.2..2.0.99).
Pinned body fields (interface, method, version) are never rewritten, only
attachments.

Request ids are unsigned 64-bit here; ``encode(message, request_id=X)``
patches the 8 id bytes in a copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from metaprotocol.codecs.dubbo.body import (
    RESPONSE_FLAGS_WITH_ATTACHMENTS,
    ScanMemo,
    response_properties,
    rewrite_attachments,
    scan_request,
    skip_response_value,
)
from metaprotocol.codecs.dubbo.header import (
    FLAG_EVENT,
    FLAG_REQUEST,
    FLAG_TWO_WAY,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    SERIALIZATION_HESSIAN2,
    SERIALIZATION_MASK,
    STATUS_BAD_REQUEST,
    STATUS_BAD_RESPONSE,
    STATUS_OK,
    STATUS_SERVER_ERROR,
    STATUS_SERVER_THREADPOOL_EXHAUSTED,
    STATUS_SERVER_TIMEOUT,
    STATUS_SERVICE_NOT_FOUND,
    build_header,
)
from metaprotocol.codecs.dubbo.hessian2 import (
    DEFAULT_MAX_DEPTH,
    Hessian2Error,
    ReadContext,
    skip_value,
    write_string,
)
from metaprotocol.core.codec import Ordering, Side
from metaprotocol.core.config import HealthCheckRequest
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    NeedData,
    ProtocolError,
    ResponseStatus,
)

__all__ = ["ERROR_STATUS", "DubboCodec"]

ERROR_STATUS: dict[ErrorType, int] = {
    ErrorType.ROUTE_NOT_FOUND: STATUS_SERVICE_NOT_FOUND,
    ErrorType.CLUSTER_NOT_FOUND: STATUS_SERVICE_NOT_FOUND,
    ErrorType.OVER_LIMIT: STATUS_SERVER_THREADPOOL_EXHAUSTED,
    ErrorType.TIMEOUT: STATUS_SERVER_TIMEOUT,
    ErrorType.BAD_RESPONSE: STATUS_BAD_RESPONSE,
    # Dubbo has no status for authentication: the request is refused as the client's fault,
    # and the body's text names the error type ("metaprotocol: unauthenticated").
    ErrorType.UNAUTHENTICATED: STATUS_BAD_REQUEST,
    ErrorType.PERMISSION_DENIED: STATUS_BAD_REQUEST,
}
"""Dubbo status per error type; every other error type is 80 SERVER_ERROR."""

_OPTIONS: Final = frozenset({"unsupported_serialization", "max_depth"})


def _header_only(buffer: bytearray | bytes, flag: int, request_id: int) -> Message:
    """What an error reply needs of a frame whose header parsed but whose decode failed:
    its type and id (``ProtocolError.request``), with the 16 header bytes as its frame."""
    if flag & FLAG_EVENT:
        kind = MessageType.HEARTBEAT
    elif not flag & FLAG_REQUEST:
        kind = MessageType.RESPONSE
    else:
        kind = MessageType.REQUEST if flag & FLAG_TWO_WAY else MessageType.ONEWAY
    return Message(kind, bytes(buffer[:HEADER_SIZE]), request_id)


def _too_large(body_length: int, limit: int, header: Message) -> ProtocolError:
    """What the header declares, said as it is: the length field is a signed 32-bit int,
    so 0xffffffff is -1 (Java reads it so), never a frame of 15 bytes."""
    declared = body_length & 0xFFFFFFFF
    if body_length < 0:
        text = f"Dubbo header declares a negative body length ({body_length}, 0x{declared:08x})"
        return ProtocolError(text, ErrorType.BAD_REQUEST, request=header)
    return ProtocolError(
        f"Dubbo header declares a body of {body_length} bytes: a frame of "
        f"{HEADER_SIZE + body_length} bytes exceeds max_message_size {limit}",
        ErrorType.MESSAGE_TOO_LARGE,
        request=header,
    )


@mypyc_attr(allow_interpreted_subclasses=True)  # users may subclass it
class DubboCodec:
    """One side of one Dubbo connection (see the module docstring for the rules)."""

    name: ClassVar[str] = "dubbo"
    ordering: ClassVar[Ordering] = Ordering.MULTIPLEXED
    supports_mutation: ClassVar[bool] = True

    def __init__(
        self, side: Side, options: Mapping[str, Any] | None = None, max_message_size: int = 8 << 20
    ) -> None:
        options = options or {}
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError(
                f"dubbo codec: unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}"
            )
        policy = options.get("unsupported_serialization", "passthrough")
        if policy not in ("passthrough", "reject"):
            raise ValueError(
                "dubbo codec: unsupported_serialization must be 'passthrough' or 'reject', "
                f"got {policy!r}"
            )
        max_depth = options.get("max_depth", DEFAULT_MAX_DEPTH)
        if not isinstance(max_depth, int) or isinstance(max_depth, bool) or max_depth < 1:
            raise ValueError(f"dubbo codec: max_depth must be a positive int, got {max_depth!r}")
        if max_message_size < 1:
            raise ValueError(f"dubbo codec: max_message_size must be >= 1, got {max_message_size}")
        self.side = side
        self._reject_unsupported = policy == "reject"
        self._max_depth = max_depth
        self._max_message_size = max_message_size
        self._desc_counts: dict[str, int] = {}
        self._memo = ScanMemo()
        self._probe_id = 0  # the id of the last health-check heartbeat sent

    # ------------------------------------------------------------ decoding

    def decode(self, buffer: bytearray) -> Message | NeedData:
        n = len(buffer)
        if n < HEADER_SIZE:
            if n and (buffer[0] != 0xDA or (n > 1 and buffer[1] != 0xBB)):
                raise ProtocolError(f"bad Dubbo magic {bytes(buffer[:2]).hex()}")
            return NEED_DATA
        magic, flag, status, request_id, body_length = HEADER.unpack_from(buffer)
        if magic != MAGIC:
            raise ProtocolError(f"bad Dubbo magic 0x{magic:04x}")
        total = HEADER_SIZE + body_length
        if body_length < 0 or total > self._max_message_size:
            header = _header_only(buffer, flag, request_id)
            raise _too_large(body_length, self._max_message_size, header)
        if n < total:
            return NEED_DATA
        if n == total:
            frame = bytes(buffer)
            buffer.clear()
        else:
            frame = bytes(buffer[:total])
            del buffer[:total]

        if flag & FLAG_EVENT:
            return Message(
                MessageType.HEARTBEAT,
                frame,
                request_id,
                {},
                ResponseStatus.OK
                if flag & FLAG_REQUEST or status in (STATUS_OK, 0)
                else ResponseStatus.ERROR,
                None,
                HEADER_SIZE,
                body_length,
            )
        if not flag & FLAG_REQUEST:
            props: dict[str, str] = {}
            # Only responses that carry attachments (flag 3/4/5, a compact int) are read.
            if (
                status == STATUS_OK
                and flag & SERIALIZATION_MASK == SERIALIZATION_HESSIAN2
                and body_length
                and 0x93 <= frame[HEADER_SIZE] <= 0x95
            ):
                try:
                    props = response_properties(frame, self._max_depth)
                except Hessian2Error:
                    props = {}  # forwarded as is: the client judges the provider's bytes
            return Message(
                MessageType.RESPONSE,
                frame,
                request_id,
                props,
                ResponseStatus.OK if status == STATUS_OK else ResponseStatus.ERROR,
                None,
                HEADER_SIZE,
                body_length,
            )
        kind = MessageType.REQUEST if flag & FLAG_TWO_WAY else MessageType.ONEWAY
        if flag & SERIALIZATION_MASK != SERIALIZATION_HESSIAN2:
            if self._reject_unsupported:
                raise ProtocolError(
                    f"Dubbo serialization id {flag & SERIALIZATION_MASK} is not supported "
                    "(only Hessian2, id 2)",
                    fatal=False,
                    request=Message(kind, frame, request_id),
                )
            return Message(kind, frame, request_id, {}, ResponseStatus.OK, None, 16, body_length)
        try:
            props, _ = scan_request(frame, self._desc_counts, self._max_depth, self._memo)
        except Hessian2Error as exc:
            raise ProtocolError(
                f"malformed Dubbo request body: {exc}",
                fatal=False,
                request=Message(kind, frame, request_id),
            ) from None
        return Message(kind, frame, request_id, props, ResponseStatus.OK, None, 16, body_length)

    # ------------------------------------------------------------ encoding

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        frame = message.frame
        if mutation:
            frame = self._mutate(frame, mutation)
        if request_id is None:
            return frame
        if not 0 <= request_id < 2**64:
            raise ValueError(f"Dubbo request id {request_id} does not fit 64 bits")
        return frame[:4] + request_id.to_bytes(8, "big") + frame[12:]

    def _mutate(self, frame: bytes, mutation: Mutation) -> bytes:
        """Rewrite the attachments map; ProtocolError (non-fatal) when the frame has none
        that can be rewritten (the proxy then decides; nothing is silently dropped)."""
        flag = frame[2]
        if flag & SERIALIZATION_MASK != SERIALIZATION_HESSIAN2:
            raise ProtocolError("cannot mutate a non-Hessian2 Dubbo frame", fatal=False)
        if flag & FLAG_EVENT:
            raise ProtocolError("cannot mutate a Dubbo heartbeat", fatal=False)
        try:
            if flag & FLAG_REQUEST:
                _, map_start = scan_request(frame, self._desc_counts, self._max_depth)
            elif frame[3] == STATUS_OK:
                response_flag, map_start = skip_response_value(frame, self._max_depth)
                if response_flag not in RESPONSE_FLAGS_WITH_ATTACHMENTS:
                    raise ProtocolError(
                        f"cannot mutate a Dubbo response without attachments "
                        f"(response flag {response_flag})",
                        ErrorType.BAD_RESPONSE,
                        fatal=False,
                    )
            else:
                raise ProtocolError(
                    f"cannot mutate a Dubbo error response (status {frame[3]})",
                    ErrorType.BAD_RESPONSE,
                    fatal=False,
                )
            # Class definitions met before the map stay valid: the prefix is unchanged.
            ctx = ReadContext(self._max_depth)
            if map_start < len(frame):
                self._replay_prefix(frame, map_start, ctx)
            new_map, map_end = rewrite_attachments(
                frame, map_start, mutation.add, mutation.remove, ctx
            )
        except Hessian2Error as exc:
            raise ProtocolError(f"cannot mutate the Dubbo body: {exc}", fatal=False) from None
        body = frame[HEADER_SIZE:map_start] + new_map + frame[map_end:]
        return frame[:12] + len(body).to_bytes(4, "big", signed=True) + body

    def _replay_prefix(self, frame: bytes, map_start: int, ctx: ReadContext) -> None:
        """Collect the class definitions of the values before the map into ``ctx``."""
        if b"C" not in frame[HEADER_SIZE:map_start]:
            return  # no class definition can be there (cheap common case)
        pos = HEADER_SIZE
        while pos < map_start:
            pos = skip_value(frame, pos, map_start, ctx)

    # ------------------------------------------------------------ replies

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        if request is not None:
            if request.type is not MessageType.REQUEST or len(request.frame) < HEADER_SIZE:
                return None  # one-way, heartbeat or response: nobody waits for an answer
            request_id = int.from_bytes(request.frame[4:12], "big")  # the 8-byte id
        else:
            return None
        status = ERROR_STATUS.get(error, STATUS_SERVER_ERROR)
        text = f"metaprotocol: {error.value}" + (f": {detail}" if detail else "")
        body = write_string(text)
        return build_header(SERIALIZATION_HESSIAN2, status, request_id, len(body)) + body

    def reply_status(self, reply: bytes) -> str:
        """The status byte of a response this side sent ("20" OK), for the access log."""
        return str(reply[3]) if len(reply) >= HEADER_SIZE else ""

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        frame = heartbeat.frame
        if len(frame) < HEADER_SIZE:
            return None
        flag = frame[2]
        wanted = FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT
        if flag & wanted != wanted:
            return None  # a heartbeat response, or a one-way event: no reply
        serialization = flag & SERIALIZATION_MASK
        # Heartbeat data is null; a non-Hessian2 peer gets its own null encoding back.
        body = b"N" if serialization == SERIALIZATION_HESSIAN2 else frame[HEADER_SIZE:]
        request_id = int.from_bytes(frame[4:12], "big")  # the 8-byte id
        return build_header(FLAG_EVENT | serialization, STATUS_OK, request_id, len(body)) + body

    # ------------------------------------------------------------ active health checks

    def probe_request(self, request: HealthCheckRequest) -> bytes:
        """Upstream side: a two-way Hessian2 heartbeat request with null data, as Java Dubbo's
        ``HeartbeatHandler`` sends it (flag 0xe2, body ``N``); ids count up from 1 per
        connection. ``request`` has nothing a Dubbo probe uses."""
        self._probe_id = (self._probe_id + 1) % 2**64
        flag = FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | SERIALIZATION_HESSIAN2
        return build_header(flag, 0, self._probe_id, 1) + b"N"

    def probe_ok(self, response: Message) -> bool:
        """Healthy: a heartbeat response (event flag, no request flag) to the last probe
        with an OK status (20, or 0 as some providers answer heartbeats)."""
        frame = response.frame
        return (
            response.type is MessageType.HEARTBEAT
            and response.status is ResponseStatus.OK
            and len(frame) >= HEADER_SIZE
            and not frame[2] & FLAG_REQUEST
            and response.request_id == self._probe_id
        )
