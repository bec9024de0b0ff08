"""Reference HTTP/1.1 framing built on h11 (the oracle), plus the codec's strictness policy.

h11 decides where messages start and end, and what the method, target, fields
and body are. On top of it this module applies the few rules where the codec is
deliberately stricter than h11 (see fastparse's module docstring): CRLF-only
line endings, no obs-fold, no control characters in framing bytes, a single
digits-only Content-Length, and no Transfer-Encoding together with
Content-Length. The checks here are written independently of fastparse so the
differential tests compare two implementations, not one.

The header limits (``max_header_count``, ``max_header_size``: 431) are applied here
too, to the head and the trailers.

This route re-parses the buffered message from its start on every call: it is
simple and obviously right, and meant for checking, not for speed (a message
arriving in many pieces costs time quadratic in its size; the fast route is linear).
"""

from __future__ import annotations

import re
from typing import Final

import h11

from metaprotocol.codecs.http1.fastparse import (
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_HEADER_SIZE,
    HttpError,
    ParsedMessage,
)
from metaprotocol.core.message import ErrorType

__all__ = ["ReferenceRequestParser", "ReferenceResponseParser"]

_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
_BARE_CR: Final = re.compile(rb"\r(?!\n)")
_BARE_CR_INSIDE: Final = re.compile(rb"\r[^\n]")  # a final CR may still get its LF
_OBS_FOLD: Final = re.compile(rb"\n[ \t]")
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _too_large(size: int, limit: int) -> HttpError:
    return HttpError(f"message of {size} bytes exceeds {limit}", 413, ErrorType.MESSAGE_TOO_LARGE)


class _Reference:
    def __init__(
        self, max_size: int, error_type: ErrorType, max_header_count: int, max_header_size: int
    ) -> None:
        self.max_size = max_size
        self.error_type = error_type
        self.max_count = max_header_count
        self.max_head = max_header_size

    def _error(self, message: str, status: int = 400) -> HttpError:
        return HttpError(message, status, self.error_type)

    def _over_limit(self, message: str) -> HttpError:
        if self.error_type is ErrorType.BAD_RESPONSE:
            return HttpError(message, 502, ErrorType.BAD_RESPONSE)
        return HttpError(message, 431, ErrorType.MESSAGE_TOO_LARGE)

    def _check_limits(self, block: bytes | bytearray, what: str) -> None:
        """``block``: a head or a trailer block, up to and including its blank line."""
        if len(block) > self.max_head:
            raise self._over_limit(
                f"{what} of {len(block)} bytes exceeds max_header_size {self.max_head}"
            )
        count = block.count(b"\n") - (1 if what == "header block" else 0) - 1
        if count > self.max_count:
            raise self._over_limit(
                f"{what} of {count} fields exceeds max_header_count {self.max_count}"
            )

    def _check_framing_bytes(self, segment: bytes | bytearray) -> None:
        """Bytes that are not body data: CRLF lines, no folding, no control characters."""
        if _BARE_LF.search(segment) or _BARE_CR.search(segment):
            raise self._error("line not terminated by CRLF")
        if _OBS_FOLD.search(segment):
            raise self._error("obs-fold continuation line")
        if _CONTROL.search(segment.replace(b"\r\n", b"")):
            raise self._error("control character in framing")

    def _check_head(self, head: bytes | bytearray) -> tuple[bool, int | None]:
        """Policy over the raw head; returns (chunked, content_length)."""
        self._check_framing_bytes(head)
        self._check_limits(head, "header block")
        te_count = 0
        lengths: list[bytes | bytearray] = []
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            name = name.lower()
            if name == b"transfer-encoding":
                te_count += 1
            elif name == b"content-length":
                lengths.append(value.strip(b" \t"))
        if len(lengths) > 1:
            raise self._error("more than one Content-Length")
        if lengths and not lengths[0].isdigit():
            raise self._error("bad Content-Length")
        if te_count and lengths:
            raise self._error("both Transfer-Encoding and Content-Length")
        return te_count > 0, int(lengths[0]) if lengths else None

    def _check_trailers(self, segment: bytes | bytearray, event: h11.EndOfMessage) -> None:
        self._check_framing_bytes(segment)
        if event.headers:
            # The segment: the CRLF ending the previous chunk's data (if any), the last-chunk
            # line, the trailers and the blank line.
            if segment.startswith(b"\r\n"):
                segment = segment[2:]
            self._check_limits(segment[segment.find(b"\n") + 1 :], "trailer block")
        for name, _ in event.headers:
            if name in (b"content-length", b"transfer-encoding"):
                raise self._error("framing field in trailers")

    def _run(
        self, conn: h11.Connection, data: bytes, buffer: bytearray, method: str | None
    ) -> ParsedMessage | None:
        """Pull events until one whole message; None if it is incomplete."""
        consumed = 0
        start = 0
        parsed: ParsedMessage | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if len(data) > self.max_size:
                        raise _too_large(len(data), self.max_size)
                    if parsed is None:
                        # Still in the head: a bare LF or CR will never end it well.
                        if _BARE_LF.search(data, start) or _BARE_CR_INSIDE.search(data, start):
                            raise self._error("line not terminated by CRLF")
                        if len(data) - start > self.max_head:
                            raise self._over_limit(
                                f"header block of at least {len(data) - start} bytes exceeds "
                                f"max_header_size {self.max_head}"
                            )
                    return None
                done = len(data) - len(conn.trailing_data[0])
                segment = data[consumed:done]
                consumed = done
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        raise self._error("upgrade (101) responses are not supported", 502)
                    self._check_framing_bytes(segment)
                    start = done
                elif isinstance(event, h11.Request | h11.Response):
                    chunked, length = self._check_head(segment)
                    if (
                        not chunked
                        and length is not None
                        and done - start + length > self.max_size
                        and not (method == "HEAD" or getattr(event, "status_code", 0) in (204, 304))
                    ):
                        raise _too_large(done - start + length, self.max_size)
                    parsed = _parsed_head(event, done - start)
                elif isinstance(event, h11.Data):
                    self._check_framing_bytes(segment[: len(segment) - len(event.data)])
                elif isinstance(event, h11.EndOfMessage):
                    self._check_trailers(segment, event)
                    assert parsed is not None
                    if done - start > self.max_size:
                        raise _too_large(done - start, self.max_size)
                    parsed.frame = data[start:done]
                    del buffer[:done]
                    return parsed
                else:  # pragma: no cover - h11 yields nothing else before EndOfMessage
                    raise self._error(f"unexpected {type(event).__name__}")
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 431:
                if len(data) > self.max_size:
                    raise _too_large(len(data), self.max_size) from exc
                raise self._over_limit(f"h11: {exc}") from exc
            if self.error_type is ErrorType.BAD_RESPONSE:
                status = 502
            raise self._error(f"h11: {exc}", status) from exc


def _parsed_head(event: h11.Request | h11.Response, head_len: int) -> ParsedMessage:
    values: dict[str, list[str]] = {}
    for raw_name, raw_value in event.headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        values.setdefault(name, []).append(value)
    fields = {name: ", ".join(parts) for name, parts in values.items()}
    version = event.http_version.decode("ascii")
    if isinstance(event, h11.Request):
        start = (event.method.decode("ascii"), event.target.decode("latin-1"), version)
    else:
        start = (version, str(event.status_code), event.reason.decode("latin-1"))
    return ParsedMessage(start, fields, b"", head_len)


class ReferenceRequestParser(_Reference):
    """Frames requests with h11 (server role)."""

    def __init__(
        self,
        max_size: int,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(max_size, ErrorType.BAD_REQUEST, max_header_count, max_header_size)

    def parse(self, buffer: bytearray) -> ParsedMessage | None:
        if not buffer:
            return None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_size)
        data = bytes(buffer)
        conn.receive_data(data)
        return self._run(conn, data, buffer, None)


class ReferenceResponseParser(_Reference):
    """Frames responses with h11 (client role, primed with the request's method)."""

    def __init__(
        self,
        max_size: int,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(max_size, ErrorType.BAD_RESPONSE, max_header_count, max_header_size)

    def _connection(self, method: str) -> h11.Connection:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.max_size)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "reference")]))
        conn.send(h11.EndOfMessage())
        return conn

    def parse(self, buffer: bytearray, method: str) -> ParsedMessage | None:
        if not buffer:
            return None
        conn = self._connection(method)
        data = bytes(buffer)
        conn.receive_data(data)
        return self._run(conn, data, buffer, method)

    def parse_eof(self, buffer: bytearray, method: str) -> ParsedMessage | None:
        """The peer closed: a close-delimited response ends here."""
        if not buffer:
            return None
        conn = self._connection(method)
        data = bytes(buffer)
        conn.receive_data(data)
        conn.receive_data(b"")
        try:
            return self._run(conn, data, buffer, method)
        except HttpError:
            return None  # truncated: the caller treats it as a reset
