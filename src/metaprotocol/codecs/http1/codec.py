"""Http1Codec: HTTP/1.1 requests and responses as whole messages for the proxy core.

Choices (see also the package docstring):
- Whole messages: head plus the full body (Content-Length or chunked, chunked
  frames kept verbatim) up to ``max_message_size``; larger gives a fatal
  ProtocolError(MESSAGE_TOO_LARGE) answered with 413.
- Ordering is FIFO (Ordering.ORDERED). The upstream codec records the method of
  every request it encodes, so it knows that a HEAD response has no body.
  Interim 1xx responses are dropped; 101 (protocol switch) is a bad response.
- ``Expect: 100-continue``: the codec never answers 100 itself (it cannot write
  on its own); the client sends the body after its own wait, the request is
  decoded whole, and the upstream encode strips the expectation, since the body
  is already there and the upstream must not send an interim reply for it.
- Header limits, codec options ``max_header_count`` (default 100 field lines) and
  ``max_header_size`` (default 60KiB, the whole head: start line, fields, blank line):
  a request over either is answered 431 and the connection closed; a response over
  either is a bad response (the client gets 502). Trailers count against the same limits.
- CONNECT, Upgrade and unsupported transfer codings are answered 501; HTTP
  versions other than 1.0 and 1.1 are answered 505. The decode raises a fatal
  ProtocolError; the downstream codec remembers the wire status of the error it
  raised last, and ``encode_error(None, BAD_REQUEST, ...)`` uses it.
- ``properties["connection"] == "close"`` on a request or a response means the
  connection must be closed after this exchange (``Connection: close``, or
  HTTP/1.0 without ``keep-alive``); otherwise it holds the raw header value.
- A response framed by the connection closing is finished by ``decode_eof``
  (additive to the Codec protocol), which adds a Content-Length so the frame can
  be forwarded on a keep-alive downstream connection.
- Connection management is hop by hop (RFC 9110 section 7.6.1), the one place where
  ``encode`` changes an unmutated message. Upstream connections are shared and kept
  alive: a request's ``Connection`` field, the fields it names, ``Keep-Alive``,
  ``Proxy-Connection`` and ``TE`` are not forwarded, and an HTTP/1.0 request goes
  upstream with ``Connection: keep-alive`` (still as HTTP/1.0, so the server never
  answers it chunked). Otherwise every HTTP/1.0 or ``Connection: close`` client would
  close the shared connection after its response. Downstream, the server's connection
  fields (``Connection`` and what it names, ``Keep-Alive``, ``Proxy-Connection``) are
  replaced by what holds for the client: ``Connection: close`` on the answer to the last
  request of a client that asked to close (the proxy then closes that connection),
  ``Connection: keep-alive`` for an HTTP/1.0 client that asked to keep alive, nothing
  for an HTTP/1.1 client. A server's ``Connection: close`` (it recycles its connection)
  therefore never closes a client. Answers whose connection fields already say what
  holds pass through untouched. What an answer must say is a property of the request it
  answers, not of the client's latest request: the upstream codec notes it when it
  encodes the request and hands it over in the response's ``codec_data`` (``"close"``,
  ``"keep-alive"`` or None), so pipelined requests of mixed versions, or answered out
  of order by different clusters, each get their own.
- Requests a client pipelines after one that asks to close are discarded, not
  forwarded (RFC 9112 section 9.6): the connection closes after the closing request's
  answer, which is the last one the client gets.
- ``Trailer`` is end to end (RFC 9110 section 6.6.2) and is forwarded.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr

from metaprotocol.codecs.http1.fastparse import (
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_HEADER_SIZE,
    HttpError,
    ParsedMessage,
    RequestParser,
    ResponseParser,
    connection_must_close,
)
from metaprotocol.codecs.http1.reference import ReferenceRequestParser, ReferenceResponseParser
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

__all__ = ["ERROR_STATUS", "Http1Codec"]

ERROR_STATUS: dict[ErrorType, int] = {
    ErrorType.ROUTE_NOT_FOUND: 404,
    ErrorType.CLUSTER_NOT_FOUND: 404,
    ErrorType.OVER_LIMIT: 429,
    ErrorType.BAD_RESPONSE: 502,
    ErrorType.UPSTREAM_RESET: 502,
    ErrorType.CONNECT_FAILURE: 502,
    ErrorType.NO_HEALTHY_UPSTREAM: 503,
    ErrorType.TIMEOUT: 504,
    ErrorType.MESSAGE_TOO_LARGE: 413,
    ErrorType.BAD_REQUEST: 400,
    ErrorType.UNSPECIFIED: 500,
    ErrorType.UNAUTHENTICATED: 401,
    ErrorType.PERMISSION_DENIED: 403,
}
_REASONS: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_PARSERS: Final = ("fast", "h11")
_OPTIONS: Final = ("max_header_count", "max_header_size", "parser")
_SIZE_RE: Final = re.compile(r"([0-9]+)\s*(KiB|MiB|KB|MB|B)?")
_SIZE_UNITS: Final = {"B": 1, "KB": 1000, "MB": 1000**2, "KiB": 1024, "MiB": 1024**2}
_OK: Final = ResponseStatus.OK
_TOKEN_RE: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_VALUE_RE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Framing belongs to the codec: mutations never touch these fields.
_PROTECTED: Final = frozenset({"content-length", "transfer-encoding"})
# RFC 9110 section 7.6.1: never forwarded, whether or not Connection names them (TE is
# connection-specific by definition, section 10.1.4; Upgrade and Transfer-Encoding are
# answered 501 or re-framed by the codec itself).
_HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "te"})
_MAX_DETAIL: Final = 200
_PROBE_FIELD_RE: Final = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no CR, LF or space


def _expects_continue(properties: Mapping[str, str]) -> bool:
    value = properties.get("expect")
    return value is not None and "100-continue" in value.lower()


@mypyc_attr(allow_interpreted_subclasses=True)  # users may subclass it
class Http1Codec:
    """HTTP/1.1 codec; option ``parser: fast|h11`` picks the framing route (default fast)."""

    name: ClassVar[str] = "http1"
    ordering: ClassVar[Ordering] = Ordering.ORDERED
    supports_mutation: ClassVar[bool] = True
    alpn_protocols: ClassVar[tuple[str, ...]] = ("http/1.1",)  # offered by TLS listeners

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"http1: unknown codec option(s) {unknown}; known: {list(_OPTIONS)}")
        parser = options.get("parser", "fast")
        if parser not in _PARSERS:
            raise ValueError(f"http1: codec option parser must be 'fast' or 'h11', got {parser!r}")
        if max_message_size <= 0:
            raise ValueError(f"http1: max_message_size must be positive, got {max_message_size}")
        count = _positive(options, "max_header_count", DEFAULT_MAX_HEADER_COUNT, False)
        size = _positive(options, "max_header_size", DEFAULT_MAX_HEADER_SIZE, True)
        self.side = side
        self.parser = parser
        fast = parser == "fast"
        self._requests = (
            RequestParser(max_message_size, count, size)
            if fast
            else ReferenceRequestParser(max_message_size, count, size)
        )
        self._responses = (
            ResponseParser(max_message_size, count, size)
            if fast
            else ReferenceResponseParser(max_message_size, count, size)
        )
        # Upstream: per request awaiting its response, in order, its method (a HEAD answer
        # has no body) and what the client's answer must say about the client's connection
        # ("close", "keep-alive" or None; handed over in the response's codec_data).
        self._pending: deque[tuple[str, str | None]] = deque()
        self._error_status: int | None = None  # downstream: wire status of the last decode error
        self._continued: object = None  # downstream: the request head we sent 100 Continue for
        # Downstream: the client asked to close after its latest request (no more are read).
        self._close_after_last = False

    @staticmethod
    def validate_mutation(mutation: Mutation, is_request: bool) -> list[str]:
        """Problems that keep ``mutation`` off the wire (optional hook: the config loader
        reports them, so a bad header value fails at load, not per request)."""
        return mutation_problems(mutation, is_request)

    def interim_reply(self) -> bytes | None:
        """Bytes to send the client now, while its request is incomplete (optional hook).

        A request with ``Expect: 100-continue`` whose head has arrived but whose body has
        not gets ``100 Continue`` once, so the client sends its body without waiting
        (RFC 9110 section 10.1.1). Only the fast route tracks a pending head.
        """
        head = getattr(self._requests, "_head", None)
        if head is None or head is self._continued or not _expects_continue(head.fields):
            return None
        if head.start_line[2] != "1.1":
            return None
        self._continued = head
        return b"HTTP/1.1 100 Continue\r\n\r\n"

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, buffer: bytearray) -> Message | NeedData:
        if self.side is Side.DOWNSTREAM:
            return self._decode_request(buffer)
        return self._decode_response(buffer)

    def decode_eof(self, buffer: bytearray) -> Message | None:
        """The peer closed: finish a response whose body runs until close, if one is pending."""
        if self.side is Side.DOWNSTREAM or not self._pending:
            return None
        parsed = self._responses.parse_eof(buffer, self._pending[0][0])
        if parsed is None:
            return None
        says = self._pending.popleft()[1]
        head_len = parsed.head_len
        frame = parsed.frame
        length = b"Content-Length: %d\r\n\r\n" % (len(frame) - head_len)
        parsed.frame = frame[: head_len - 2] + length + frame[head_len:]
        parsed.head_len = head_len - 2 + len(length)
        message = self._response_message(parsed, says)
        message.properties["connection"] = "close"
        return message

    def _decode_request(self, buffer: bytearray) -> Message | NeedData:
        if self._close_after_last:
            # RFC 9112 section 9.6: a client that asked to close sends nothing more, and a
            # server must not process what it sends anyway. The connection closes after
            # the answer to the closing request; the client retries the rest elsewhere.
            buffer.clear()
            return NEED_DATA
        try:
            parsed = self._requests.parse(buffer)
            if parsed is None:
                return NEED_DATA
            method, target, version = parsed.start_line
            fields = parsed.fields
            if method == "CONNECT":
                raise HttpError("CONNECT is not supported", 501)
            if "upgrade" in fields:
                raise HttpError("protocol upgrade is not supported", 501)
            if version != "1.1" and version != "1.0":
                raise HttpError(f"HTTP/{version} is not supported", 505)
        except HttpError as exc:
            self._error_status = exc.status
            raise
        fields[":method"] = method
        fields[":path"] = target
        host = fields.get("host")
        if host is not None:
            fields[":authority"] = host
        if (version == "1.0" or "connection" in fields) and connection_must_close(version, fields):
            fields["connection"] = "close"
            self._close_after_last = True
        frame = parsed.frame
        head_len = parsed.head_len
        # Positional arguments: this runs once per request and keywords cost measurably.
        return Message(
            MessageType.REQUEST, frame, None, fields, _OK, None, head_len, len(frame) - head_len
        )

    def _decode_response(self, buffer: bytearray) -> Message | NeedData:
        if not self._pending:
            if buffer:
                raise HttpError("response without a pending request", 502, ErrorType.BAD_RESPONSE)
            return NEED_DATA
        parsed = self._responses.parse(buffer, self._pending[0][0])
        if parsed is None:
            return NEED_DATA
        return self._response_message(parsed, self._pending.popleft()[1])

    def _response_message(self, parsed: ParsedMessage, client_connection: str | None) -> Message:
        version, status, _ = parsed.start_line
        fields = parsed.fields
        fields[":status"] = status
        if (version == "1.0" or "connection" in fields) and connection_must_close(version, fields):
            fields["connection"] = "close"
        frame = parsed.frame
        return Message(
            MessageType.RESPONSE,
            frame,
            properties=fields,
            status=ResponseStatus.OK if int(status) < 500 else ResponseStatus.ERROR,
            header_size=parsed.head_len,
            body_size=len(frame) - parsed.head_len,
            codec_data=client_connection,
        )

    # -- encoding ------------------------------------------------------------------------------

    def encode(
        self,
        message: Message,
        *,
        request_id: int | None = None,
        mutation: Mutation | None = None,
    ) -> bytes:
        """Pass the frame through, or rebuild its head; ``request_id`` is ignored (no ids)."""
        if self.side is Side.UPSTREAM:
            method = message.properties.get(":method", "GET")
            if mutation:
                method = next((v for k, v in mutation.add if k == ":method"), method)
            properties = message.properties
            drop_expect = _expects_continue(properties)
            # Every HTTP/1.0 request has a "connection" property (the decoder sets "close"
            # when it did not ask for keep-alive): the version is only read then.
            connection = properties.get("connection")
            http10 = connection is not None and _is_http10_request(message.frame)
            hop = (
                http10
                or (connection is not None and connection.lower() != "keep-alive")
                or "keep-alive" in properties
                or "proxy-connection" in properties
                or "te" in properties
            )
            if not mutation and not drop_expect and not hop:
                data = message.frame
            else:
                data = _rewrite(
                    message,
                    mutation,
                    drop_expect=drop_expect,
                    hop_by_hop=hop,
                    connection=b"keep-alive" if http10 else None,
                )
            # Recorded once the request is sure to be sent (a failed rewrite raises above).
            says = "close" if connection == "close" else "keep-alive" if http10 else None
            self._pending.append((method, says))
            return data
        # Downstream: the server's connection fields describe its (shared) connection to
        # the proxy, not the client's, so they are replaced by what holds for the client,
        # which the upstream codec noted from the request (``codec_data``): close when the
        # request asked to close (it is the client's last); keep-alive for an HTTP/1.0
        # client that asked for it (1.0 closes by default); nothing for HTTP/1.1, whose
        # connections stay open by default. The common answers (no connection fields, or
        # the server's own keep-alive to an HTTP/1.1 or a keep-alive HTTP/1.0 client) pass
        # through untouched.
        properties = message.properties
        wanted = message.codec_data if isinstance(message.codec_data, str) else None
        connection = properties.get("connection")
        if connection is None:
            hop = wanted is not None
        else:
            hop = connection.lower() != (wanted or "keep-alive")
        hop = hop or "keep-alive" in properties or "proxy-connection" in properties
        if mutation or hop:
            data = _rewrite(
                message,
                mutation,
                drop_expect=False,
                hop_by_hop=hop,
                connection=None if wanted is None else wanted.encode("ascii"),
            )
        else:
            data = message.frame
        return data

    def encode_error(self, request: Message | None, error: ErrorType, detail: str) -> bytes | None:
        """A short text/plain reply; ``Connection: close`` when the request was undecodable."""
        status = ERROR_STATUS[error]
        if request is None:
            if self._error_status is not None and error in (
                ErrorType.BAD_REQUEST,
                ErrorType.MESSAGE_TOO_LARGE,
            ):
                status = self._error_status
            close = True
            keep_alive = False
            head_only = False
        else:
            connection = request.properties.get("connection")
            close = connection == "close"
            # An HTTP/1.0 keep-alive client would read silence as close (every HTTP/1.0
            # request has a connection property, so the version is only read then).
            keep_alive = connection is not None and not close
            keep_alive = keep_alive and _is_http10_request(request.frame)
            head_only = request.properties.get(":method") == "HEAD"
        self._error_status = None
        reason = _REASONS[status]
        text = detail[:_MAX_DETAIL] if detail else reason
        body = text.encode("utf-8", "replace") + b"\n"
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            % (status, reason.encode("ascii"), len(body))
        )
        if close:
            head += b"Connection: close\r\n"
        elif keep_alive:
            head += b"Connection: keep-alive\r\n"
        # A reply to HEAD announces the body's length but carries none (RFC 9110 9.3.2).
        return head + b"\r\n" + (b"" if head_only else body)

    def reply_status(self, reply: bytes) -> str:
        """The status code of a response this side sent ("503"), for the access log."""
        code = reply[9:12]
        return code.decode("ascii") if reply[:5] == b"HTTP/" and code.isdigit() else ""

    def encode_heartbeat_reply(self, heartbeat: Message) -> bytes | None:
        return None  # HTTP/1.1 has no heartbeats

    # -- active health checks (optional hook ProbesHealth) ------------------------------------

    def probe_request(self, request: HealthCheckRequest) -> bytes:
        """Upstream side: ``GET request.path`` with ``Host: request.host``, kept alive (the
        next probe reuses the connection); recorded like an encoded request so the answer
        decodes in order."""
        host = request.host or ""
        if not (request.path.startswith("/") and _PROBE_FIELD_RE.fullmatch(request.path)):
            raise ValueError(
                f"http1: health check path must be an origin-form path, got {request.path!r}"
            )
        if not _PROBE_FIELD_RE.fullmatch(host):
            raise ValueError(f"http1: health check host must be visible ASCII, got {host!r}")
        self._pending.append(("GET", None))
        return (
            f"GET {request.path} HTTP/1.1\r\nHost: {host}\r\n"
            "User-Agent: metaprotocol-health-check\r\n\r\n"
        ).encode("ascii")

    def probe_ok(self, response: Message) -> bool:
        """Healthy: a 2xx answer."""
        status = response.properties.get(":status", "")
        return len(status) == 3 and status[0] == "2"


def _positive(options: Mapping[str, Any], key: str, default: int, size: bool) -> int:
    """A positive integer option; ``size`` options also take ``64KiB``-style strings."""
    value = options.get(key, default)
    if size and isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2) or "B"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive size (bytes or e.g. 60KiB)" if size else "a positive integer"
        raise ValueError(f"http1 codec_options.{key}: expected {kind}, got {value!r}")
    return value


def _is_http10_request(frame: bytes) -> bool:
    eol = frame.find(b"\r\n")
    return eol >= 8 and frame.startswith(b"HTTP/1.0", eol - 8)


def _hop_by_hop(lines: list[bytes]) -> set[str]:
    """The connection-specific fields of a head: the fixed ones and those ``Connection``
    names (RFC 9110 section 7.6.1)."""
    names = set(_HOP_BY_HOP)
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"connection":
            names.update(t.strip().lower().decode("latin-1") for t in value.split(b","))
    names.discard("")
    return names


def _rewrite(
    message: Message,
    mutation: Mutation | None,
    *,
    drop_expect: bool,
    hop_by_hop: bool = False,
    connection: bytes | None = None,
) -> bytes:
    """Rebuild the head with fields removed / added; the body bytes are kept verbatim.
    ``hop_by_hop`` drops the connection-specific fields, then adds ``Connection:
    <connection>`` when that is given."""
    frame = message.frame
    head_len = message.header_size
    lines = frame[: head_len - 4].split(b"\r\n")
    start = lines[0]
    remove: set[str] = {"expect"} if drop_expect else set()
    added: list[bytes] = []
    if hop_by_hop:
        remove |= _hop_by_hop(lines)
        if connection is not None:
            added.append(b"Connection: " + connection)
    if mutation:
        problems = mutation_problems(mutation, message.is_request)
        if problems:
            # A config the loader checked never gets here; a Mutation built in code may.
            raise ProtocolError(f"http1: {problems[0]}", ErrorType.UNSPECIFIED, fatal=False)
        remove.update(key.lower() for key in mutation.remove)
        for key, value in mutation.add:
            name = key.lower()
            if name in _PROTECTED:
                continue
            if name.startswith(":"):
                if name == ":authority":
                    remove.add("host")
                start = _rewrite_start_line(start, name, value, message.is_request, added)
                continue
            remove.add(name)
            added.append(b"%s: %s" % (name.encode("ascii"), value.encode("latin-1")))
    remove -= _PROTECTED
    kept = [
        line
        for line in lines[1:]
        if line.partition(b":")[0].decode("latin-1").lower() not in remove
    ]
    return b"\r\n".join([start, *kept, *added]) + b"\r\n\r\n" + frame[head_len:]


def _rewrite_start_line(
    start: bytes, key: str, value: str, is_request: bool, added: list[bytes]
) -> bytes:
    """Pseudo keys on requests: ``:method`` and ``:path`` rewrite the request line,
    ``:authority`` sets Host (added to ``added``). Other pseudo keys are ignored. The
    values were checked by ``mutation_problems``."""
    if not is_request:
        return start
    if key == ":authority":
        added.append(b"Host: " + value.encode("latin-1"))
        return start
    method, target, version = start.split(b" ")
    if key == ":method":
        return b" ".join([value.encode("ascii"), target, version])
    if key == ":path":
        return b" ".join([method, value.encode("ascii"), version])
    return start


def mutation_problems(mutation: Mutation, is_request: bool) -> list[str]:
    """What in ``mutation`` cannot go on the wire: added field names must be tokens and
    values field text (no CR or LF: no header injection); on requests ``:method`` must be
    a token, ``:path`` visible ASCII and ``:authority`` a non-empty field value. Framing
    fields and other pseudo keys are ignored by the rewrite, so never a problem."""
    problems: list[str] = []
    for key, value in mutation.add:
        name = key.lower()
        if name in _PROTECTED:
            continue
        if not name.startswith(":"):
            if _TOKEN_RE.fullmatch(name) is None or _VALUE_RE.fullmatch(value) is None:
                problems.append(f"cannot add header {key!r}: {value!r}")
        elif not is_request:
            continue
        elif name == ":authority" and (not value or _VALUE_RE.fullmatch(value) is None):
            problems.append(f"bad :authority {value!r}")
        elif name == ":method" and _TOKEN_RE.fullmatch(value) is None:
            problems.append(f"bad :method {value!r}")
        elif name == ":path" and (not value or any(not 0x21 <= ord(c) <= 0x7E for c in value)):
            problems.append(f"bad :path {value!r}")
    return problems
