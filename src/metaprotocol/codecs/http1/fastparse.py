"""Fast HTTP/1.1 message framing: find one whole request or response in a growing buffer.

Rules (RFC 9112; stricter than h11 where h11 is lenient, never looser):
- Lines end with CRLF only. Bare LF, bare CR, obs-fold continuation lines and
  control characters in field values are rejected (RFC 9112 section 2.2, 5.2).
- Request line: ``token SP 1*VCHAR SP HTTP/d.d``; field names are tokens.
- HTTP/1.1 requests carry exactly one Host field (RFC 9112 section 3.2).
- Content-Length: one field, 1..20 digits, no comma lists.
- Transfer-Encoding: one field whose value is exactly ``chunked`` (any case);
  other codings are answered 501 like h11 does.
- Both Transfer-Encoding and Content-Length: rejected (RFC 9112 section 6.3,
  request smuggling defence).
- Chunk lines: ``1*20HEXDIG [";" ext] OWS CRLF``; each chunk's data ends with CRLF;
  trailers obey the field rules and may not carry framing fields.
- Header limits (Envoy's ``max_headers_count`` / ``max_request_headers_kb``): a head
  (start line, fields and the blank line) above ``max_header_size`` bytes, or with more
  than ``max_header_count`` field lines, is refused with 431 as soon as that is known;
  trailers count against the same limits, and so does a chunk line.
- A bare LF or bare CR is refused as soon as it arrives, not when the head is complete
  (a client ending its lines with LF alone would otherwise wait for an answer until the
  idle timeout).

Every step is linear in the bytes it reads: repeated fields are gathered in lists and
joined once (joining them one by one is quadratic in their number).

The parser remembers how far it has searched, so a head or a chunked body that
arrives in small pieces costs O(n) in total, not O(n^2). It assumes the caller
passes the same buffer each time and only appends to it between calls, which is
how the proxy's one-buffer-per-connection works; a shrunken buffer resets it.
"""

from __future__ import annotations

import re
from typing import Final

from metaprotocol.core.message import ErrorType, ProtocolError

__all__ = [
    "DEFAULT_MAX_HEADER_COUNT",
    "DEFAULT_MAX_HEADER_SIZE",
    "HttpError",
    "ParsedMessage",
    "RequestParser",
    "ResponseParser",
    "connection_must_close",
]

_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# RFC 9110 section 5.5: field-value = OWS *(field-vchar / SP / HTAB) OWS, which is exactly
# "any run of HTAB, SP, VCHAR and obs-text"; OWS is trimmed afterwards. Every field line
# is preceded by the CRLF that ends the line before it.
_FIELD_BLOCK_RE: Final = re.compile(rb"(?:\r\n%s:[\t\x20-\x7e\x80-\xff]*)*" % _TOKEN)
_REQUEST_LINE_RE: Final = re.compile(rb"%s [\x21-\x7e]+ HTTP/[0-9]\.[0-9]" % _TOKEN)
_STATUS_LINE_RE: Final = re.compile(rb"HTTP/[0-9]\.[0-9] [0-9]{3}(?: [ \t\x21-\x7e\x80-\xff]*)?")
# One field line, decoded as Latin-1 (what _FIELD_BLOCK_RE matches for each line of a block).
_FIELD_LINE_RE: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")
# Matching a head's field block with _FIELD_BLOCK_RE was the largest single cost of a
# request's decode (compiled build: a fifth of it, per-byte regex matching). Instead:
# - the bytes: deleting every byte a field line may hold (_FIELD_BYTES) from the head leaves
#   exactly the CRLF before each field line, unless a control character or a CR or LF outside
#   a CRLF pair is there (one ``translate``);
# - the names: a name already seen to be a token needs no check (_KNOWN_NAMES, with its
#   lower-case form); any other line is matched with _FIELD_LINE_RE, and its name remembered.
#   Clients send the same few names again and again, so this memo of a pure function stays
#   small; it stops growing at _MAX_KNOWN_NAMES.
_FIELD_BYTES: Final = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_KNOWN_NAMES: Final[dict[str, str]] = {}
_MAX_KNOWN_NAMES: Final = 1024
_CHUNK_LINE_RE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[\t\x20-\x7e\x80-\xff]*)?[ \t]*")
_DIGITS_RE: Final = re.compile(r"[0-9]{1,20}")
# A line ending other than CRLF: LF without CR before it, or CR followed by anything but LF
# (a CR at the very end of the buffer may still get its LF).
_BAD_EOL_RE: Final = re.compile(rb"(?<!\r)\n|\r[^\n]")

DEFAULT_MAX_HEADER_COUNT: Final = 100
DEFAULT_MAX_HEADER_SIZE: Final = 60 * 1024

_BAD_RESPONSE: Final = ErrorType.BAD_RESPONSE
_FRAMING_FIELDS: Final = frozenset({"content-length", "transfer-encoding"})
_REQUEST_SINGLE_FIELDS: Final = frozenset({"content-length", "transfer-encoding", "host"})

# Body framing kinds.
_LENGTH: Final = 0
_CHUNKED: Final = 1
_UNTIL_EOF: Final = 2


class HttpError(ProtocolError):
    """A framing or policy violation, with the HTTP status the error reply should carry."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        error_type: ErrorType = ErrorType.BAD_REQUEST,
    ) -> None:
        super().__init__(message, error_type, fatal=True)
        self.status = status


class ParsedMessage:
    """One whole message: ``fields`` maps lower-case names to values (duplicates joined).

    A plain class: one is built per message, and a dataclass's generated ``__init__`` would
    stay interpreted code in the mypyc build."""

    __slots__ = ("fields", "frame", "head_len", "start_line")

    def __init__(
        self,
        start_line: tuple[str, str, str],  # (method, target, version) or (version, status, reason)
        fields: dict[str, str],
        frame: bytes,
        head_len: int,  # bytes up to and including the blank line
    ) -> None:
        self.start_line = start_line
        self.fields = fields
        self.frame = frame
        self.head_len = head_len

    def __repr__(self) -> str:
        return (
            f"ParsedMessage(start_line={self.start_line!r}, fields={self.fields!r}, "
            f"frame={self.frame!r}, head_len={self.head_len!r})"
        )


def connection_must_close(version: str, fields: dict[str, str]) -> bool:
    """True when the sender asks to close after this exchange (RFC 9112 section 9.3)."""
    value = fields.get("connection")
    if value is None:
        return version == "1.0"
    tokens = [t.strip(" \t").lower() for t in value.split(",")]
    if "close" in tokens:
        return True
    return version == "1.0" and "keep-alive" not in tokens


def _known_name(line: str, name: str) -> str | None:
    """The lower-case name of a valid field ``line`` whose name is ``name``; None when the
    line is not a field line (only called for lines the fast check could not vouch for)."""
    if _FIELD_LINE_RE.fullmatch(line) is None:
        return None
    lowered = name.lower()
    if len(_KNOWN_NAMES) < _MAX_KNOWN_NAMES:
        _KNOWN_NAMES[name] = lowered
    return lowered


def _join_repeated(fields: dict[str, str], repeated: dict[str, list[str]]) -> None:
    for name, values in repeated.items():
        fields[name] = ", ".join(values)


def _too_large(size: int, limit: int) -> HttpError:
    return HttpError(
        f"message of {size} bytes exceeds the limit of {limit} bytes",
        413,
        ErrorType.MESSAGE_TOO_LARGE,
    )


class _Framer:
    """Shared state machine: head search, then body by length, chunks or until EOF."""

    __slots__ = (
        "_body_end",
        "_buffer_id",
        "_chunk_pos",
        "_framing",
        "_head",
        "_line_checked",
        "_search",
        "error_type",
        "max_count",
        "max_head",
        "max_size",
        "single_fields",
    )

    def __init__(
        self,
        max_size: int,
        error_type: ErrorType,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        self.max_size = max_size
        self.error_type = error_type
        self.max_count = max_header_count
        self.max_head = max_header_size
        self.single_fields = _FRAMING_FIELDS  # fields that may appear only once
        self._reset()

    def _reset(self) -> None:
        self._search = 0  # where the next search for the end of the head starts
        self._buffer_id = 0
        self._line_checked = False  # start line seen complete and valid while waiting
        self._head: ParsedMessage | None = None  # head parsed, body still arriving
        self._framing = _LENGTH
        self._body_end = 0  # _LENGTH: frame end
        self._chunk_pos = 0  # _CHUNKED: offset of the next chunk line (or trailers)

    def _error(self, message: str, status: int = 400) -> HttpError:
        return HttpError(message, status, self.error_type)

    def _too_many_fields(self, what: str, detail: str) -> HttpError:
        """431 for a request (RFC 6585 section 5), a bad response (502) for a response."""
        if self.error_type is ErrorType.BAD_RESPONSE:
            return HttpError(f"{what} {detail}", 502, ErrorType.BAD_RESPONSE)
        return HttpError(f"{what} {detail}", 431, ErrorType.MESSAGE_TOO_LARGE)

    def _head_too_large(self, size: int, what: str = "header block") -> HttpError:
        return self._too_many_fields(
            what, f"of at least {size} bytes exceeds max_header_size {self.max_head}"
        )

    def _check_line_ends(self, buffer: bytearray, start: int, stop: int) -> None:
        """Refuse a bare LF or CR in ``buffer[start:stop]`` now rather than wait for a CRLF
        that may never come."""
        if _BAD_EOL_RE.search(buffer, start, stop) is not None:
            raise self._error("line not terminated by CRLF")

    def _find_head(self, buffer: bytearray) -> int:
        """Offset just past the blank line ending the head, or -1."""
        if id(buffer) != self._buffer_id or self._search > len(buffer):
            self._buffer_id = id(buffer)
            self._search = 0
            self._line_checked = False
        end = buffer.find(b"\r\n\r\n", self._search)
        if end < 0:
            size = len(buffer)
            if size > self.max_size:
                raise _too_large(size, self.max_size)
            if size > self.max_head:
                raise self._head_too_large(size)
            if size and buffer[0] < 0x21:
                raise self._error("message does not start with a start line")
            self._check_line_ends(buffer, self._search, size)
            if not self._line_checked:
                # Fail fast on garbage instead of buffering it up to the size limit.
                eol = buffer.find(b"\r\n")
                if eol >= 0:
                    self._check_start_line(buffer, eol)
                    self._line_checked = True
            self._search = max(0, size - 3)
            return -1
        if end + 4 > self.max_size:
            raise _too_large(end + 4, self.max_size)
        if end + 4 > self.max_head:
            raise self._head_too_large(end + 4)
        return end + 4

    def _check_start_line(self, buffer: bytearray, eol: int) -> None:
        raise NotImplementedError

    def _field_lines(self, text: str, start: int) -> list[str]:
        lines = text[start:].split("\r\n")
        if len(lines) > self.max_count:
            raise self._too_many_fields(
                "header block", f"of {len(lines)} fields exceeds max_header_count {self.max_count}"
            )
        return lines

    def _bad_field(self) -> HttpError:
        return self._error("bad header field", 502 if self.error_type is _BAD_RESPONSE else 400)

    def _parse_fields(self, text: str, start: int, head: bytearray) -> dict[str, str]:
        fields: dict[str, str] = {}
        repeated: dict[str, list[str]] = {}
        lines = self._field_lines(text, start)
        if len(head.translate(None, _FIELD_BYTES)) != 2 * len(lines):
            raise self._bad_field()
        for line in lines:
            name, _, value = line.partition(":")
            lowered = _KNOWN_NAMES.get(name)
            if lowered is None:
                lowered = _known_name(line, name)
                if lowered is None:
                    raise self._bad_field()
            name = lowered
            if name in fields:
                self._repeat_field(fields, repeated, name, value)
            else:
                fields[name] = value.strip(" \t")
        if repeated:
            _join_repeated(fields, repeated)
        return fields

    def _repeat_field(
        self, fields: dict[str, str], repeated: dict[str, list[str]], name: str, value: str
    ) -> None:
        """A repeated field: list-valued fields are joined with ", " (by ``_join_repeated``,
        once); framing fields and Host may not repeat."""
        if name in self.single_fields:
            status = 501 if name == "transfer-encoding" else 400
            raise self._error(f"more than one {name} field", status)
        values = repeated.get(name)
        if values is None:
            repeated[name] = [fields[name], value.strip(" \t")]
        else:
            values.append(value.strip(" \t"))

    def _framing_fields(self, fields: dict[str, str]) -> int | None:
        """Validate Transfer-Encoding / Content-Length; -1 means chunked, None no framing field."""
        te = fields.get("transfer-encoding")
        cl = fields.get("content-length")
        if te is not None:
            if cl is not None:
                raise self._error("both Transfer-Encoding and Content-Length (RFC 9112 6.3)")
            if te.lower() != "chunked":
                raise self._error(f"unsupported Transfer-Encoding {te!r}", 501)
            return -1
        if cl is not None:
            if _DIGITS_RE.fullmatch(cl) is None:
                raise self._error(f"bad Content-Length {cl!r}")
            return int(cl)
        return None

    def _set_body_framing(self, length: int | None, head_len: int) -> None:
        """Arm the body state; ``length`` as returned by _framing_fields (None: until EOF)."""
        if length is None:
            self._framing = _UNTIL_EOF
        elif length < 0:
            self._framing = _CHUNKED
            self._chunk_pos = head_len
        else:
            end = head_len + length
            if end > self.max_size:
                raise _too_large(end, self.max_size)
            self._framing = _LENGTH
            self._body_end = end

    def _finish(self, buffer: bytearray, head: ParsedMessage, end: int) -> ParsedMessage:
        head.frame = bytes(buffer[:end])
        del buffer[:end]
        self._reset()
        return head

    def _continue_body(self, buffer: bytearray, head: ParsedMessage) -> ParsedMessage | None:
        if self._framing == _LENGTH:
            if len(buffer) < self._body_end:
                return None
            return self._finish(buffer, head, self._body_end)
        if self._framing == _CHUNKED:
            end = self._scan_chunks(buffer)
            if end < 0:
                return None
            return self._finish(buffer, head, end)
        # _UNTIL_EOF: only decode_eof ends it.
        if len(buffer) > self.max_size:
            raise _too_large(len(buffer), self.max_size)
        return None

    def _scan_chunks(self, buffer: bytearray) -> int:
        """Advance over complete chunks; return the frame end once the trailers end, else -1."""
        pos = self._chunk_pos
        limit = self.max_size
        size = len(buffer)
        while True:
            eol = buffer.find(b"\r\n", pos, pos + self.max_head)
            if eol < 0:
                if size > limit:
                    raise _too_large(size, limit)
                if size - pos >= self.max_head:
                    raise self._head_too_large(size - pos, "chunk line")
                self._check_line_ends(buffer, pos, size)
                self._chunk_pos = pos
                return -1
            match = _CHUNK_LINE_RE.fullmatch(buffer, pos, eol)
            if match is None:
                raise self._error(f"bad chunk line {bytes(buffer[pos:eol])[:40]!r}")
            chunk = int(match.group(1), 16)
            if chunk == 0:
                return self._scan_trailers(buffer, pos, eol + 2)
            data_end = eol + 2 + chunk
            if data_end + 2 > limit:
                raise _too_large(data_end + 2, limit)
            if data_end + 2 > size:
                self._chunk_pos = pos
                return -1
            if buffer[data_end : data_end + 2] != b"\r\n":
                raise self._error("chunk data not followed by CRLF")
            pos = data_end + 2

    def _scan_trailers(self, buffer: bytearray, last_chunk: int, start: int) -> int:
        if buffer[start : start + 2] == b"\r\n":
            return start + 2
        end = buffer.find(b"\r\n\r\n", start, start + self.max_head)
        if end < 0:
            if len(buffer) > self.max_size:
                raise _too_large(len(buffer), self.max_size)
            if len(buffer) - start >= self.max_head:
                raise self._head_too_large(len(buffer) - start, "trailer block")
            self._check_line_ends(buffer, start, len(buffer))
            self._chunk_pos = last_chunk  # rescans the trailers (< max_header_size) next time
            return -1
        if _FIELD_BLOCK_RE.fullmatch(buffer, start - 2, end) is None:
            raise self._error("bad trailer field")
        lines = bytes(buffer[start:end]).split(b"\r\n")
        if len(lines) > self.max_count:
            raise self._too_many_fields(
                "trailer block", f"of {len(lines)} fields exceeds max_header_count {self.max_count}"
            )
        for line in lines:
            name = line.partition(b":")[0].decode("ascii").lower()
            if name in _FRAMING_FIELDS:
                raise self._error(f"{name} in trailers")
        if end + 4 > self.max_size:
            raise _too_large(end + 4, self.max_size)
        return end + 4


class RequestParser(_Framer):
    """Frames requests on the downstream side."""

    __slots__ = ()

    def __init__(
        self,
        max_size: int,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(max_size, ErrorType.BAD_REQUEST, max_header_count, max_header_size)
        self.single_fields = _REQUEST_SINGLE_FIELDS

    def parse(self, buffer: bytearray) -> ParsedMessage | None:
        """Remove and return one whole request from ``buffer``, or None if incomplete."""
        head = self._head
        if head is not None:
            return self._continue_body(buffer, head)
        head_len = self._find_head(buffer)
        if head_len < 0:
            return None
        # The common case is written out inline: every call costs here.
        end = head_len - 4
        eol = buffer.find(b"\r\n")
        self._check_start_line(buffer, eol)
        raw = buffer[:end]
        text = raw.decode("latin-1")
        method, target, version = text[:eol].split(" ")
        version = version[5:]
        fields: dict[str, str] = {}
        if end > eol:
            repeated: dict[str, list[str]] = {}
            lines = self._field_lines(text, eol + 2)
            if len(raw.translate(None, _FIELD_BYTES)) != 2 * len(lines):
                raise self._bad_field()
            for line in lines:
                name, _, value = line.partition(":")
                lowered = _KNOWN_NAMES.get(name)
                if lowered is None:
                    lowered = _known_name(line, name)
                    if lowered is None:
                        raise self._bad_field()
                name = lowered
                if name in fields:
                    self._repeat_field(fields, repeated, name, value)
                else:
                    fields[name] = value.strip(" \t")
            if repeated:
                _join_repeated(fields, repeated)
        if version == "1.1" and "host" not in fields:
            raise self._error("HTTP/1.1 request without Host")
        head = ParsedMessage((method, target, version), fields, b"", head_len)
        if "content-length" in fields or "transfer-encoding" in fields:
            length = self._framing_fields(fields)
            self._set_body_framing(0 if length is None else length, head_len)
            if self._framing != _LENGTH or len(buffer) < self._body_end:
                self._head = head
                return self._continue_body(buffer, head)
            end = self._body_end
        else:
            end = head_len
        head.frame = bytes(buffer[:end])
        del buffer[:end]
        self._search = 0
        self._line_checked = False
        self._framing = _LENGTH
        return head

    def _check_start_line(self, buffer: bytearray, eol: int) -> None:
        if _REQUEST_LINE_RE.fullmatch(buffer, 0, eol) is None:
            raise self._error(f"bad request line {bytes(buffer[:eol])[:60]!r}")


class ResponseParser(_Framer):
    """Frames responses on the upstream side; the caller says which method each answers."""

    __slots__ = ()

    def __init__(
        self,
        max_size: int,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(max_size, ErrorType.BAD_RESPONSE, max_header_count, max_header_size)

    def parse(self, buffer: bytearray, method: str) -> ParsedMessage | None:
        """Remove and return one whole final response (interim 1xx ones are dropped)."""
        head = self._head
        while head is None:
            head_len = self._find_head(buffer)
            if head_len < 0:
                return None
            head = self._parse_head(buffer, head_len)
            status = int(head.start_line[1])
            length = self._framing_fields(head.fields)
            if status < 200:
                if status == 101:
                    raise self._error("upgrade (101) responses are not supported", 502)
                # Interim responses carry no body; drop them (RFC 9110 section 15.2).
                del buffer[:head_len]
                self._reset()
                head = None
                continue
            if status in (204, 304) or method == "HEAD":
                return self._finish(buffer, head, head_len)
            self._set_body_framing(length, head_len)
            if self._framing == _LENGTH and len(buffer) >= self._body_end:
                return self._finish(buffer, head, self._body_end)
            self._head = head
        return self._continue_body(buffer, head)

    def parse_eof(self, buffer: bytearray, method: str) -> ParsedMessage | None:
        """The peer closed: finish a close-delimited body; None if nothing is pending."""
        if self._head is None and buffer:
            self.parse(buffer, method)  # the head may have arrived with the close
        head = self._head
        if head is None or self._framing != _UNTIL_EOF:
            return None
        return self._finish(buffer, head, len(buffer))

    def _check_start_line(self, buffer: bytearray, eol: int) -> None:
        if _STATUS_LINE_RE.fullmatch(buffer, 0, eol) is None:
            raise self._error(f"bad status line {bytes(buffer[:eol])[:60]!r}", 502)

    def _parse_head(self, buffer: bytearray, head_len: int) -> ParsedMessage:
        eol = buffer.find(b"\r\n")
        self._check_start_line(buffer, eol)
        raw = buffer[: head_len - 4]
        text = raw.decode("latin-1")
        version, status, reason = ([*text[:eol].split(" ", 2), ""])[:3]
        fields = self._parse_fields(text, eol + 2, raw) if head_len - 4 > eol else {}
        return ParsedMessage((version[5:], status, reason), fields, b"", head_len)
