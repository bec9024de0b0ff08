"""Decoding RESP2 requests on the downstream side: multibulk arrays and inline commands.

Framing follows redis-server's ``processMultibulkBuffer`` / ``processInlineBuffer``
(src/networking.c) so the proxy and the server always agree on where a request ends and
what its command and key are:

- ``*N\\r\\n`` then N bulk strings ``$len\\r\\n<len bytes>\\r\\n``; lengths are plain
  decimals (no sign, no leading zero); ``*0`` and negative counts are empty commands that
  the server skips, so they are carried as a prefix of the next request's frame.
- anything not starting with ``*`` is an inline command: one line up to ``\\n`` (an
  optional ``\\r`` before it), at most ``max_inline_size`` bytes, split like ``sdssplitargs``
  (whitespace separated, ``"..."`` with escapes and ``'...'`` quoting). Empty lines are
  skipped like empty multibulks. An inline command is forwarded as the RESP array of the
  arguments the proxy read from it (kept in ``Message.codec_data``; ``encode`` sends it),
  never as the raw line, so the server executes exactly what was routed. A line holding
  a NUL byte is refused with ``-ERR`` (the connection stays open): redis-server finds
  the end of an inline line with ``strchr``, which stops at the NUL, so it would wait
  for a newline that never comes, and every other client sharing that upstream
  connection would wait with it.

An incomplete request costs O(new bytes) per call, not a rescan: :class:`_Progress`
remembers where parsing stopped and how many bytes are needed before trying again (a large
bulk arriving in pieces is not looked at until its declared length has arrived).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from metaprotocol.codecs.redis.commands import (
    AUTH_ARITY_DETAIL,
    CONDITIONALLY_BLOCKING_COMMANDS,
    NON_POOLABLE_COMMANDS,
    NOPROTO_DETAIL,
    QUIT_DETAIL,
    refusal_reason,
    uses_block_option,
)
from metaprotocol.codecs.redis.keys import KEY_SPECS
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    NeedData,
    ProtocolError,
    ResponseStatus,
)

__all__ = ["RequestDecoder", "command_name", "multibulk", "split_inline"]

_STAR: Final = 0x2A
_DOLLAR: Final = 0x24
_CR: Final = 0x0D
_LF: Final = 0x0A
_HEADER_WINDOW: Final = 24  # "*" or "$", 19 digits and CRLF always fit: a longer header is garbage
_MERGE_WINDOW: Final = 16 * 1024  # bytes decode_many looks at per call
_MIN_BULK: Final = 6  # "$0\r\n\r\n": lets a declared count fail the size limit before any parsing
_REQUEST: Final = MessageType.REQUEST
_OK: Final = ResponseStatus.OK

# Commands needing more than a lookup: refused ones, QUIT and XREAD with BLOCK.
_SPECIAL: Final = NON_POOLABLE_COMMANDS | CONDITIONALLY_BLOCKING_COMMANDS | {"QUIT"}
# Never merged into a pipelined run: the special ones, and those with several keys (keys.py
# KEY_SPECS), whose ``key`` property names their first key only, while the split hook
# (split.py) routes each key by itself.
_UNMERGED: Final = _SPECIAL | frozenset(KEY_SPECS)

_COMMAND_NAMES: dict[bytes, str] = {}  # raw first argument -> upper-cased name
_COMMAND_CACHE_LIMIT: Final = 4096  # clients could send endless distinct names: stop caching then


def command_name(raw: bytes) -> str:
    """The ``command`` property: the first argument upper-cased (ASCII only), as a str."""
    name = _COMMAND_NAMES.get(raw)
    if name is None:
        name = raw.upper().decode("utf-8", "surrogateescape")
        if len(_COMMAND_NAMES) < _COMMAND_CACHE_LIMIT:
            _COMMAND_NAMES[raw] = name
    return name


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _Incomplete(Exception):
    """Internal: the buffer ends inside a length header."""


class _Progress:
    """Where an incomplete request stopped, valid while the same buffer only grows."""

    __slots__ = ("base", "buffer", "count", "index", "key", "need", "pos", "seen")

    def __init__(
        self,
        buffer: bytearray,
        need: int,
        base: int,
        pos: int,
        count: int,
        index: int,
        key: tuple[int, int, int, int],
    ) -> None:
        self.buffer = buffer  # identity check: progress is only reused for this object
        self.seen = len(buffer)
        self.need = need  # do not look again before the buffer holds this many bytes
        self.base = base  # start of the request proper (after skipped empty commands)
        self.pos = pos  # next unparsed byte (inline: where the newline search resumes)
        self.count = count  # multibulk element count; -1 while locating / reading inline
        self.index = index  # elements already parsed
        self.key = key  # (command start, command end, key start, key end)


def _bad(message: str) -> ProtocolError:
    return ProtocolError(f"Protocol error: {message}", ErrorType.BAD_REQUEST)


def _parse_length(digits: bytearray | bytes) -> int:
    """A bulk length exactly as redis accepts it: decimal digits, no sign, no leading zero."""
    if not digits.isdigit() or (digits[0] == 0x30 and len(digits) > 1):
        raise _bad(f"invalid bulk length {bytes(digits)!r}")
    return int(digits)


class RequestDecoder:
    """Frames requests and extracts ``command`` and ``key``; one per downstream connection.

    With ``answers_auth`` (the listener has ``codec_options.auth``), ``AUTH`` and ``HELLO <v>
    AUTH <user> <pass>`` decode as heartbeats carrying the credentials, for the codec to
    check; without it they are refused like any connection-state command.
    """

    __slots__ = (
        "_answers_auth",
        "_fast_count",
        "_max_array",
        "_max_inline",
        "_max_size",
        "_progress",
    )

    def __init__(
        self,
        max_message_size: int,
        max_array_length: int,
        max_inline_size: int,
        answers_auth: bool = False,
    ) -> None:
        self._max_size = max_message_size
        self._max_array = max_array_length
        self._fast_count = min(9, max_array_length)  # counts the one-digit fast path takes
        self._max_inline = max_inline_size
        self._answers_auth = answers_auth
        self._progress: _Progress | None = None

    def decode(self, buffer: bytearray) -> Message | NeedData:
        progress = self._progress
        cs = ce = ks = ke = index = 0
        if progress is None:
            try:
                # Fast path: "*<1-9>\r\n" at the very start of the buffer.
                fast = buffer[0] == _STAR and buffer[2] == _CR and buffer[3] == _LF
            except IndexError:
                fast = False
            count = buffer[1] - 0x30 if fast else 0
            if 0 < count <= self._fast_count:
                base = 0
                pos = 4
            else:
                located = self._locate(buffer, 0, 0)
                if not isinstance(located, tuple):
                    return located
                base, pos, count = located
        else:
            self._progress = None
            if progress.buffer is not buffer or len(buffer) < progress.seen:
                located = self._locate(buffer, 0, 0)  # not the buffer we saw: start over
            elif len(buffer) < progress.need:
                self._progress = progress
                return NEED_DATA
            elif progress.count < 0:
                located = self._locate(buffer, progress.base, progress.pos)
            else:
                located = (progress.base, progress.pos, progress.count)
                index = progress.index
                cs, ce, ks, ke = progress.key
            if not isinstance(located, tuple):
                return located
            base, pos, count = located
        # Parse bulk strings index..count-1 starting at pos.
        size = len(buffer)
        try:
            while index < count:
                if buffer[pos] != _DOLLAR:
                    raise _bad(f"expected '$', got {chr(buffer[pos])!r}")
                if buffer[pos + 2] == _CR:  # one-digit length, the common case
                    start = pos + 4
                    end = start + buffer[pos + 1] - 0x30
                    if buffer[pos + 3] != _LF or not start <= end <= start + 9:
                        raise _bad(f"invalid bulk length {bytes(buffer[pos + 1 : pos + 3])!r}")
                elif (
                    buffer[pos + 3] == _CR  # two digits (10-99; no leading zero), also common
                    and buffer[pos + 4] == _LF
                    and 0x31 <= buffer[pos + 1] <= 0x39
                    and 0x30 <= buffer[pos + 2] <= 0x39
                ):
                    start = pos + 5
                    end = start + (buffer[pos + 1] - 0x30) * 10 + buffer[pos + 2] - 0x30
                else:
                    eol = buffer.find(b"\r\n", pos + 1, pos + _HEADER_WINDOW)
                    if eol < 0:
                        if size - pos >= _HEADER_WINDOW:
                            raise _bad("invalid bulk length")
                        raise _Incomplete
                    start = eol + 2
                    end = start + _parse_length(buffer[pos + 1 : eol])
                if end + 2 > size:
                    if end + 2 > self._max_size:
                        raise _too_large(end + 2, self._max_size)
                    self._progress = _Progress(
                        buffer, end + 2, base, pos, count, index, (cs, ce, ks, ke)
                    )
                    return NEED_DATA
                if buffer[end] != _CR or buffer[end + 1] != _LF:
                    raise _bad("bulk string not terminated by CRLF")
                if index < 2:
                    if index == 0:
                        cs = start
                        ce = end
                    else:
                        ks = start
                        ke = end
                pos = end + 2
                index += 1
        except (IndexError, _Incomplete):
            if size >= self._max_size:
                raise _too_large(size + 1, self._max_size) from None
            self._progress = _Progress(buffer, size + 1, base, pos, count, index, (cs, ce, ks, ke))
            return NEED_DATA
        if pos > self._max_size:
            raise _too_large(pos, self._max_size)
        frame = bytes(buffer[:pos])
        del buffer[:pos]
        raw = frame[cs:ce]
        command = _COMMAND_NAMES.get(raw) or command_name(raw)  # inlined cache hit
        if command in _SPECIAL:
            local = _check_special(command, frame, base, self._answers_auth)
            if local is not None:
                return local
        if count > 1:
            properties = {
                "command": command,
                "key": frame[ks:ke].decode("utf-8", "surrogateescape"),
            }
        else:
            properties = {"command": command}
        return Message(_REQUEST, frame, None, properties, _OK, None, 0, pos)

    def decode_many(
        self,
        buffer: bytearray,
        limit: int,
        same_route: Callable[[dict[str, str], dict[str, str]], bool],
    ) -> Message | NeedData:
        """Like ``decode``, but plain commands pipelined behind the first one join it in one
        message (``count`` of them) while ``same_route`` says they go where it goes.

        Only the plain form is merged: a complete multibulk of at most nine elements whose
        command is not special. Anything else ends the run and is left for the
        next ``decode``, which gives it its own message (or its error).
        """
        first = self.decode(buffer)
        if not buffer or limit < 2 or first is NEED_DATA or first.type is not _REQUEST:
            return first
        if first.codec_data is not None:
            return first  # an inline command: encode sends its RESP array, alone
        if first.properties.get("command") in KEY_SPECS:
            return first  # several keys: split per target, never carried by the first one
        first_properties = first.properties
        # Scanned as bytes (indexing them is much cheaper than a bytearray's once compiled),
        # and only a window: a long pipeline is merged over several calls, never copied whole.
        data = bytes(buffer[:_MERGE_WINDOW])
        size = len(data)
        max_size = self._max_size - len(first.frame)
        count = 1
        pos = 0
        while count < limit:
            frame_end = self._plain_command(data, pos, size)
            if frame_end is None:
                break
            end, properties = frame_end
            if end > max_size or not same_route(first_properties, properties):
                break
            pos = end
            count += 1
        if count == 1:
            return first
        del buffer[:pos]
        frame = first.frame + data[:pos]
        return Message(_REQUEST, frame, None, first_properties, _OK, None, 0, len(frame),
                       None, count)  # fmt: skip

    def _plain_command(
        self, buffer: bytes, pos: int, size: int
    ) -> tuple[int, dict[str, str]] | None:
        """The end and properties of a complete plain command at ``pos``, else None.

        Written for speed (it runs once per pipelined command): literal byte values, and
        lengths of one or two digits read without slicing.
        """
        if pos + 4 > size or buffer[pos] != 0x2A or buffer[pos + 2] != 0x0D:  # "*n\r"
            return None
        count = buffer[pos + 1] - 0x30
        if not 0 < count <= self._fast_count or buffer[pos + 3] != 0x0A:
            return None
        pos += 4
        command = ""
        key = ""
        for index in range(count):
            if pos + 4 > size or buffer[pos] != 0x24:  # "$"
                return None
            d = buffer[pos + 1] - 0x30
            if buffer[pos + 2] == 0x0D:  # "$n\r\n"
                if not 0 <= d <= 9 or buffer[pos + 3] != 0x0A:
                    return None
                start = pos + 4
                end = start + d
            elif pos + 5 <= size and buffer[pos + 3] == 0x0D:  # "$nn\r\n"
                e = buffer[pos + 2] - 0x30
                if not 1 <= d <= 9 or not 0 <= e <= 9 or buffer[pos + 4] != 0x0A:
                    return None
                start = pos + 5
                end = start + d * 10 + e
            else:
                eol = buffer.find(b"\r\n", pos + 1, pos + _HEADER_WINDOW)
                if eol < 0:
                    return None
                digits = buffer[pos + 1 : eol]
                if not digits.isdigit() or digits[0] == 0x30:
                    return None
                start = eol + 2
                end = start + int(digits)
            if end + 2 > size or buffer[end] != 0x0D or buffer[end + 1] != 0x0A:
                return None
            if index == 0:
                raw = buffer[start:end]
                name = _COMMAND_NAMES.get(raw) or command_name(raw)
                if name in _UNMERGED:
                    return None  # decode() looks at it on its own
                command = name
            elif index == 1:
                key = buffer[start:end].decode("utf-8", "surrogateescape")
            pos = end + 2
        if count > 1:
            return pos, {"command": command, "key": key}
        return pos, {"command": command}

    def _locate(
        self, buffer: bytearray, base: int, scan: int
    ) -> tuple[int, int, int] | Message | NeedData:
        """Skip empty commands from ``base``, then read an inline command or a multibulk header.

        A multibulk header gives ``(base, first element, count)`` for ``decode`` to go on.
        """
        size = len(buffer)
        while True:
            if base >= size:
                if base > self._max_size:
                    raise _too_large(base, self._max_size)
                if base:
                    self._progress = _Progress(buffer, size + 1, base, base, -1, 0, (0, 0, 0, 0))
                return NEED_DATA
            if buffer[base] != _STAR:
                result = self._inline(buffer, base, max(scan, base))
                if isinstance(result, int):
                    base = result  # an empty line: skip it like redis does
                    continue
                return result
            eol = buffer.find(b"\r\n", base + 1, base + _HEADER_WINDOW)
            if eol < 0:
                if size - base >= _HEADER_WINDOW:
                    raise _bad("invalid multibulk length")
                self._progress = _Progress(buffer, size + 1, base, base, -1, 0, (0, 0, 0, 0))
                return NEED_DATA
            digits = buffer[base + 1 : eol]
            negative = digits[:1] == b"-"
            magnitude = digits[1:] if negative else digits
            if not magnitude.isdigit() or (magnitude[0] == 0x30 and len(magnitude) > 1):
                raise _bad("invalid multibulk length")
            count = int(magnitude)
            if negative or count == 0:
                base = eol + 2  # an empty command: the server skips it
                continue
            if count > self._max_array:
                raise _bad(f"invalid multibulk length {count} (limit {self._max_array})")
            if eol + 2 + _MIN_BULK * count > self._max_size:
                raise _too_large(eol + 2 + _MIN_BULK * count, self._max_size)
            return base, eol + 2, count

    def _inline(self, buffer: bytearray, base: int, scan: int) -> Message | NeedData | int:
        """One inline command line at ``base``; an int is the next base after an empty line."""
        newline = buffer.find(b"\n", scan)
        if newline < 0:
            size = len(buffer)
            if size - base > self._max_inline:
                raise _bad("too big inline request")
            if size >= self._max_size:
                raise _too_large(size + 1, self._max_size)
            self._progress = _Progress(buffer, size + 1, base, size, -1, 0, (0, 0, 0, 0))
            return NEED_DATA
        if newline - base > self._max_inline:
            raise _bad("too big inline request")
        end = newline + 1
        if end > self._max_size:
            raise _too_large(end, self._max_size)
        line = bytes(buffer[base:newline])
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\0" in line:
            del buffer[:end]  # framed by its newline: the connection can go on
            raise ProtocolError(
                "Protocol error: NUL byte in inline command (send it as a RESP array)",
                ErrorType.BAD_REQUEST,
                fatal=False,
            )
        arguments = split_inline(line)
        if arguments is None:
            raise _bad("unbalanced quotes in request")
        if not arguments:
            return end
        frame = bytes(buffer[:end])
        del buffer[:end]
        command = command_name(arguments[0])
        if command in _SPECIAL:
            local = _refuse_if_needed(command, arguments, frame, self._answers_auth)
            if local is not None:
                return local
        properties = {"command": command}
        if len(arguments) > 1:
            properties["key"] = _text(arguments[1])
        # codec_data: what ``encode`` sends upstream instead of the line.
        return Message(_REQUEST, frame, None, properties, _OK, None, 0, end, multibulk(arguments))


def multibulk(arguments: list[bytes]) -> bytes:
    """The RESP array of bulk strings that carries ``arguments`` (what clients send)."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        parts.append(b"$%d\r\n" % len(argument))
        parts.append(argument)
        parts.append(b"\r\n")
    return b"".join(parts)


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"request of at least {size} bytes exceeds max_message_size {limit}",
        ErrorType.MESSAGE_TOO_LARGE,
    )


# Some forms are answered by the proxy (AUTH only when the listener has credentials).
_ANSWERED_LOCALLY: Final = frozenset({"HELLO", "CLIENT", "AUTH"})


def _check_special(command: str, frame: bytes, base: int, answers_auth: bool) -> Message | None:
    """Refuse ``command`` if it cannot go through a pooled connection (see commands.py),
    or return the message the proxy answers itself (HELLO, AUTH)."""
    arguments: list[bytes] = []
    if command in CONDITIONALLY_BLOCKING_COMMANDS or command in _ANSWERED_LOCALLY:
        arguments = _multibulk_arguments(frame, base)
    return _refuse_if_needed(command, arguments, frame, answers_auth)


def _refuse_if_needed(
    command: str, arguments: list[bytes], frame: bytes, answers_auth: bool
) -> Message | None:
    if command == "QUIT":
        raise ProtocolError(QUIT_DETAIL, ErrorType.BAD_REQUEST, fatal=True)
    if command == "HELLO":
        return _hello(arguments, frame, answers_auth)
    if command == "AUTH" and answers_auth:
        return _auth(arguments, frame)
    if command == "CLIENT" and len(arguments) > 1 and arguments[1].upper() == b"SETINFO":
        # Client library metadata (redis-py sends it on connect): acknowledged, not forwarded,
        # since it would label a connection other clients share.
        properties = {"command": "CLIENT"}
        return Message(MessageType.HEARTBEAT, frame, None, properties, _OK, None, 0, len(frame),
                       ("ok",))  # fmt: skip
    if command in CONDITIONALLY_BLOCKING_COMMANDS and not uses_block_option(arguments[1:]):
        return None
    raise ProtocolError(refusal_reason(command), ErrorType.BAD_REQUEST, fatal=False)


def _hello(arguments: list[bytes], frame: bytes, answers_auth: bool) -> Message:
    """``HELLO [protover]`` is answered by the proxy (a HEARTBEAT for the core): the
    client's protocol version picks which upstream connections serve it (RESP2 and RESP3
    clients never share one). ``HELLO <v> AUTH <user> <pass>`` too when the proxy checks
    credentials itself (``answers_auth``; the codec checks them). SETNAME, and AUTH
    otherwise, would change shared state: refused."""
    with_auth = answers_auth and len(arguments) == 5 and arguments[2].upper() == b"AUTH"
    if len(arguments) > 2 and not with_auth:
        raise ProtocolError(refusal_reason("HELLO"), ErrorType.BAD_REQUEST, fatal=False)
    version = 2
    if len(arguments) >= 2:
        raw = arguments[1]
        if raw not in (b"2", b"3"):
            raise ProtocolError(NOPROTO_DETAIL, ErrorType.BAD_REQUEST, fatal=False)
        version = int(raw)
    properties = {"command": "HELLO"}
    data: tuple[object, ...] = ("hello", version)
    if with_auth:
        data = ("hello", version, arguments[3], arguments[4])
    return Message(MessageType.HEARTBEAT, frame, None, properties, _OK, None, 0, len(frame),
                   data)  # fmt: skip


def _auth(arguments: list[bytes], frame: bytes) -> Message:
    """``AUTH <password>`` (the ``default`` user) or ``AUTH <username> <password>``: a
    HEARTBEAT carrying the credentials, which the codec checks."""
    if len(arguments) == 2:
        data = ("auth", b"default", arguments[1])
    elif len(arguments) == 3:
        data = ("auth", arguments[1], arguments[2])
    else:
        raise ProtocolError(AUTH_ARITY_DETAIL, ErrorType.BAD_REQUEST, fatal=False)
    properties = {"command": "AUTH"}
    return Message(MessageType.HEARTBEAT, frame, None, properties, _OK, None, 0, len(frame),
                   data)  # fmt: skip


def _multibulk_arguments(frame: bytes, base: int) -> list[bytes]:
    """Every argument of a complete, already validated multibulk frame starting at ``base``."""
    eol = frame.index(b"\r\n", base)
    count = int(frame[base + 1 : eol])
    pos = eol + 2
    arguments = []
    for _ in range(count):
        eol = frame.index(b"\r\n", pos)
        start = eol + 2
        end = start + int(frame[pos + 1 : eol])
        arguments.append(frame[start:end])
        pos = end + 2
    return arguments


_UNQUOTED_END: Final = frozenset(b" \n\r\t")  # sdssplitargs ends a bare word only on these
_SPACE: Final = frozenset(b" \t\n\r\x0b\x0c")  # C isspace()
_ESCAPES: Final = {ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("b"): 0x08, ord("a"): 0x07}
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline command like redis' ``sdssplitargs``; None on unbalanced quotes.

    A NUL ends the line (the C code stops there). Without quotes or the two whitespace
    characters a bare word does not end on (\\v, \\f), ``bytes.split`` gives the same answer.
    """
    nul = line.find(b"\0")
    if nul >= 0:
        line = line[:nul]
    if not any(c in line for c in (b'"', b"'", b"\x0b", b"\x0c")):
        return line.split()
    arguments: list[bytes] = []
    pos = 0
    size = len(line)
    while True:
        while pos < size and line[pos] in _SPACE:
            pos += 1
        if pos >= size:
            return arguments
        current = bytearray()
        quote = 0  # 0 bare word, else the quote byte we are inside
        while True:
            if pos >= size:
                if quote:
                    return None  # unterminated quotes
                break
            c = line[pos]
            if quote == 0x22:  # "..."
                if c == 0x5C and line[pos + 1 : pos + 2] == b"x" and _is_hex(line, pos + 2):
                    current.append(int(line[pos + 2 : pos + 4], 16))
                    pos += 3
                elif c == 0x5C and pos + 1 < size:
                    pos += 1
                    current.append(_ESCAPES.get(line[pos], line[pos]))
                elif c == 0x22:
                    if pos + 1 < size and line[pos + 1] not in _SPACE:
                        return None  # closing quote must be followed by space or end
                    pos += 1
                    break
                else:
                    current.append(c)
            elif quote == 0x27:  # '...'
                if c == 0x5C and line[pos + 1 : pos + 2] == b"'":
                    pos += 1
                    current.append(0x27)
                elif c == 0x27:
                    if pos + 1 < size and line[pos + 1] not in _SPACE:
                        return None
                    pos += 1
                    break
                else:
                    current.append(c)
            elif c in _UNQUOTED_END:
                break
            elif c == 0x22 or c == 0x27:
                quote = c
            else:
                current.append(c)
            pos += 1
        arguments.append(bytes(current))


def _is_hex(line: bytes, pos: int) -> bool:
    return pos + 1 < len(line) and line[pos] in _HEX and line[pos + 1] in _HEX
