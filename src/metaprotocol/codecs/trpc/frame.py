"""tRPC frame layout: the 16-byte fixed header, the protobuf field numbers, frame builders.

The layout (docs/trpc.md; trpc-group/trpc ``trpc/trpc.proto``), all big-endian:

    0  magic            u16   0x0930
    2  data frame type  u8    0 unary, 1 stream
    3  stream frame     u8    0 unary; 1 INIT, 2 DATA, 3 FEEDBACK, 4 CLOSE
    4  total size       u32   the whole frame, fixed header included
    8  pb header size   u16   the RequestProtocol / ResponseProtocol header after byte 16
    10 stream id        u32   0 for unary frames
    14 reserved         u16
    16 pb header, then the body (a stream frame has no pb header: its meta is the body)

Unary frames carry a ``RequestProtocol`` or ``ResponseProtocol`` header; stream INIT carries a
``TrpcStreamInitMeta``, FEEDBACK a ``TrpcStreamFeedBackMeta``, CLOSE a ``TrpcStreamCloseMeta``
and DATA the application's bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from typing import Final

from metaprotocol.codecs.protobuf import encode_len_field, encode_varint_field
from metaprotocol.core.message import ErrorType

__all__ = [
    "CLOSE_RESET",
    "FIXED_HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_ERROR_MSG",
    "RET_CODES",
    "CloseMeta",
    "FrameType",
    "InitMeta",
    "InitRequestMeta",
    "InitResponseMeta",
    "RequestField",
    "ResponseField",
    "StreamFrame",
    "build_close",
    "build_frame",
    "build_request",
    "build_response",
    "encode_trans_info",
]

MAGIC: Final = 0x0930
FIXED_HEADER: Final = struct.Struct(">HBBIHIH")
HEADER_SIZE: Final = FIXED_HEADER.size  # 16
MAX_PB_HEADER: Final = 0xFFFF
# An error reply's reason is cut to this many bytes: the pb header that carries it has a
# 16-bit size, and no client needs more of a reason than this.
MAX_ERROR_MSG: Final = 4096
CLOSE_RESET: Final = 1  # TrpcStreamCloseType: 0 closes one direction, 1 resets both


class FrameType(enum.IntEnum):
    UNARY = 0
    STREAM = 1


class StreamFrame(enum.IntEnum):
    UNARY = 0
    INIT = 1
    DATA = 2
    FEEDBACK = 3
    CLOSE = 4


class RequestField(enum.IntEnum):
    """``RequestProtocol`` field numbers."""

    VERSION = 1
    CALL_TYPE = 2  # 0 unary, 1 oneway
    REQUEST_ID = 3
    TIMEOUT = 4
    CALLER = 5
    CALLEE = 6
    FUNC = 7
    MESSAGE_TYPE = 8
    TRANS_INFO = 9  # map<string, bytes>
    CONTENT_TYPE = 10
    CONTENT_ENCODING = 11
    ATTACHMENT_SIZE = 12


class ResponseField(enum.IntEnum):
    """``ResponseProtocol`` field numbers."""

    VERSION = 1
    CALL_TYPE = 2
    REQUEST_ID = 3
    RET = 4  # framework error code (RET_CODES)
    FUNC_RET = 5  # the application's error code
    ERROR_MSG = 6
    MESSAGE_TYPE = 7
    TRANS_INFO = 8
    CONTENT_TYPE = 9
    CONTENT_ENCODING = 10
    ATTACHMENT_SIZE = 12


class InitMeta(enum.IntEnum):
    """``TrpcStreamInitMeta`` field numbers."""

    REQUEST_META = 1
    RESPONSE_META = 2
    INIT_WINDOW_SIZE = 3
    CONTENT_TYPE = 4
    CONTENT_ENCODING = 5


class InitRequestMeta(enum.IntEnum):
    """``TrpcStreamInitRequestMeta`` field numbers."""

    CALLER = 1
    CALLEE = 2
    FUNC = 3
    MESSAGE_TYPE = 4
    TRANS_INFO = 5


class InitResponseMeta(enum.IntEnum):
    RET = 1
    ERROR_MSG = 2


class CloseMeta(enum.IntEnum):
    """``TrpcStreamCloseMeta`` field numbers."""

    CLOSE_TYPE = 1
    RET = 2
    MSG = 3
    MESSAGE_TYPE = 4
    TRANS_INFO = 5
    FUNC_RET = 6


# TrpcRetCode for each reason the proxy answers itself. The client talks to the proxy as to its
# server, so the server-side codes come first; the client-side ones say what went wrong between
# the proxy and the upstream.
RET_CODES: Final[Mapping[ErrorType, int]] = {
    ErrorType.ROUTE_NOT_FOUND: 11,  # TRPC_SERVER_NOSERVICE_ERR
    ErrorType.CLUSTER_NOT_FOUND: 131,  # TRPC_CLIENT_ROUTER_ERR
    ErrorType.NO_HEALTHY_UPSTREAM: 131,  # TRPC_CLIENT_ROUTER_ERR
    ErrorType.BAD_RESPONSE: 122,  # TRPC_CLIENT_DECODE_ERR
    ErrorType.OVER_LIMIT: 23,  # TRPC_SERVER_LIMITED_ERR
    ErrorType.TIMEOUT: 21,  # TRPC_SERVER_TIMEOUT_ERR
    ErrorType.UPSTREAM_RESET: 141,  # TRPC_CLIENT_NETWORK_ERR
    ErrorType.CONNECT_FAILURE: 111,  # TRPC_CLIENT_CONNECT_ERR
    ErrorType.MESSAGE_TOO_LARGE: 1,  # TRPC_SERVER_DECODE_ERR
    ErrorType.BAD_REQUEST: 1,  # TRPC_SERVER_DECODE_ERR
    ErrorType.UNSPECIFIED: 999,  # TRPC_INVOKE_UNKNOWN_ERR
    ErrorType.UNAUTHENTICATED: 41,  # TRPC_SERVER_AUTH_ERR
    ErrorType.PERMISSION_DENIED: 41,  # TRPC_SERVER_AUTH_ERR
}


def build_frame(
    frame_type: int, stream_frame: int, stream_id: int, pb_header: bytes, body: bytes
) -> bytes:
    """A whole frame: the fixed header with its sizes computed, the pb header, the body."""
    total = HEADER_SIZE + len(pb_header) + len(body)
    head = FIXED_HEADER.pack(MAGIC, frame_type, stream_frame, total, len(pb_header), stream_id, 0)
    return head + pb_header + body


def encode_trans_info(number: int, trans_info: Mapping[str, bytes]) -> bytes:
    """A ``map<string, bytes>`` field: one length-delimited entry per key."""
    return b"".join(
        encode_len_field(number, encode_len_field(1, key.encode()) + encode_len_field(2, value))
        for key, value in trans_info.items()
    )


def build_request(
    request_id: int,
    func: str,
    body: bytes = b"",
    *,
    caller: str = "",
    callee: str = "",
    oneway: bool = False,
    timeout_ms: int = 0,
    trans_info: Mapping[str, bytes] | None = None,
) -> bytes:
    """A unary request frame (tests, benchmarks, the demo)."""
    pb = b"".join(
        (
            encode_varint_field(RequestField.CALL_TYPE, 1) if oneway else b"",
            encode_varint_field(RequestField.REQUEST_ID, request_id) if request_id else b"",
            encode_varint_field(RequestField.TIMEOUT, timeout_ms) if timeout_ms else b"",
            encode_len_field(RequestField.CALLER, caller.encode()) if caller else b"",
            encode_len_field(RequestField.CALLEE, callee.encode()) if callee else b"",
            encode_len_field(RequestField.FUNC, func.encode()) if func else b"",
            encode_trans_info(RequestField.TRANS_INFO, trans_info or {}),
        )
    )
    return build_frame(FrameType.UNARY, StreamFrame.UNARY, 0, pb, body)


def build_response(
    request_id: int,
    body: bytes = b"",
    *,
    ret: int = 0,
    func_ret: int = 0,
    error_msg: str = "",
    trans_info: Mapping[str, bytes] | None = None,
) -> bytes:
    """A unary response frame (error replies, tests); ``error_msg`` is cut to 4 KiB."""
    pb = b"".join(
        (
            encode_varint_field(ResponseField.REQUEST_ID, request_id) if request_id else b"",
            encode_varint_field(ResponseField.RET, ret) if ret else b"",
            encode_varint_field(ResponseField.FUNC_RET, func_ret) if func_ret else b"",
            encode_len_field(ResponseField.ERROR_MSG, _reason(error_msg)) if error_msg else b"",
            encode_trans_info(ResponseField.TRANS_INFO, trans_info or {}),
        )
    )
    return build_frame(FrameType.UNARY, StreamFrame.UNARY, 0, pb, body)


def _reason(text: str) -> bytes:
    """``text`` as UTF-8, cut to ``MAX_ERROR_MSG`` bytes on a character boundary."""
    data = text.encode(errors="replace")
    if len(data) <= MAX_ERROR_MSG:
        return data
    return data[:MAX_ERROR_MSG].decode(errors="ignore").encode()


def build_close(stream_id: int, *, reset: bool = False, ret: int = 0, msg: str = "") -> bytes:
    """A stream CLOSE frame (a reset, with ``ret``, is how the proxy fails a stream)."""
    meta = b"".join(
        (
            encode_varint_field(CloseMeta.CLOSE_TYPE, CLOSE_RESET) if reset else b"",
            encode_varint_field(CloseMeta.RET, ret) if ret else b"",
            encode_len_field(CloseMeta.MSG, _reason(msg)) if msg else b"",
        )
    )
    return build_frame(FrameType.STREAM, StreamFrame.CLOSE, stream_id, b"", meta)
