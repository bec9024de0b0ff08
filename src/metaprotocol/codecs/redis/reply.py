"""Decoding RESP2 and RESP3 replies on the upstream side, one complete reply per message.

Every type of https://github.com/redis/redis-specifications/blob/master/protocol/RESP3.md
is framed: simple string ``+``, error ``-``, integer ``:``, bulk ``$`` (``$-1`` null),
array ``*`` (``*-1`` null), null ``_``, boolean ``#``, double ``,``, big number ``(``,
bulk error ``!``, verbatim string ``=``, map ``%``, set ``~``, attribute ``|``, push ``>``
and the streamed forms (``$?`` with ``;len`` chunks, ``*?``/``~?``/``%?`` ended by ``.``).

- An attribute is not a reply of its own: it is framed together with the value after it
  (at the top level that makes ``|..`` + reply one message).
- A top-level push (``>``) is out-of-band data, not the answer to a request: the message
  carries the property ``push = "1"`` so the core can tell it apart.
- ``-`` and ``!`` replies get status ERROR.

Nothing is materialised: a stack of "elements still expected" per open aggregate is enough
to find where the reply ends. Like the request decoder it remembers where an incomplete
reply stopped, so data arriving in small pieces is parsed once.
"""

from __future__ import annotations

from typing import Final

from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    NeedData,
    ProtocolError,
    ResponseStatus,
)

__all__ = ["ReplyDecoder"]

# Kinds of open aggregate on the stack: [remaining (or seen, for streamed), kind]
_AGGREGATE: Final = 0
_ATTRIBUTE: Final = 1  # completes without counting as an element of its parent
_STREAMED: Final = 2  # "*?" / "~?": open until "."; the count is elements seen
_STREAMED_MAP: Final = 3  # "%?": like _STREAMED, but the count must be even at "."
_STREAMED_STRING: Final = 4  # "$?": only ";len" chunks until ";0"

_SIMPLE: Final = frozenset(b"+-:,(#_")
_BULK: Final = frozenset(b"$!=")
_AGGREGATES: Final = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}
_STREAMABLE: Final = frozenset(b"*~%>")
_ERRORS: Final = frozenset(b"-!")
_PUSH: Final = ord(">")
_ATTR: Final = ord("|")
_MERGE_WINDOW: Final = 16 * 1024  # bytes decode_many looks at per call
_MIN_ELEMENT: Final = 3  # "_\r\n": lets a declared count fail the size limit early
_RESPONSE: Final = MessageType.RESPONSE
_OK: Final = ResponseStatus.OK
_ERROR: Final = ResponseStatus.ERROR
_PUSH_PROPERTIES: Final = {"push": "1"}


def _bad(message: str) -> ProtocolError:
    return ProtocolError(f"bad redis reply: {message}", ErrorType.BAD_RESPONSE)


def _length(line: bytearray) -> int:
    if not line.isdigit() or (line[0] == 0x30 and len(line) > 1):
        raise _bad(f"invalid length {bytes(line)!r}")
    return int(line)


def _check_simple(kind: int, line: bytearray) -> None:
    """Validate the payload of a one-line reply of type ``kind``."""
    if kind == 0x3A or kind == 0x28:  # ":" integer, "(" big number
        digits = line[1:] if line[:1] == b"-" or line[:1] == b"+" else line
        if not digits.isdigit():
            raise _bad(f"invalid integer {bytes(line)!r}")
    elif kind == 0x2C:  # "," double
        try:
            float(line)
        except ValueError:
            raise _bad(f"invalid double {bytes(line)!r}") from None
    elif kind == 0x23:  # "#" boolean
        if line != b"t" and line != b"f":
            raise _bad(f"invalid boolean {bytes(line)!r}")
    elif kind == 0x5F and line:  # "_" null
        raise _bad("null with a payload")


class _Progress:
    """Where an incomplete reply stopped, valid while the same buffer only grows."""

    __slots__ = ("buffer", "need", "pos", "scan", "seen", "stack", "top")

    def __init__(
        self, buffer: bytearray, need: int, pos: int, scan: int, stack: list[list[int]], top: int
    ) -> None:
        self.buffer = buffer
        self.seen = len(buffer)
        self.need = need
        self.pos = pos
        self.scan = scan  # where the CRLF search for the line at ``pos`` resumes
        self.stack = stack
        self.top = top  # type byte of the top-level reply (after attributes), 0 if unknown


class ReplyDecoder:
    """Frames one reply at a time; one per upstream connection."""

    __slots__ = ("_max_array", "_max_depth", "_max_size", "_progress")

    def __init__(self, max_message_size: int, max_array_length: int, max_depth: int) -> None:
        self._max_size = max_message_size
        self._max_array = max_array_length
        self._max_depth = max_depth
        self._progress: _Progress | None = None

    def decode(self, buffer: bytearray) -> Message | NeedData:
        progress = self._progress
        if progress is None:
            return self._parse(buffer, 0, 0, [], 0)
        self._progress = None
        if progress.buffer is not buffer or len(buffer) < progress.seen:
            return self._parse(buffer, 0, 0, [], 0)  # not the buffer we saw: start over
        if len(buffer) < progress.need:
            self._progress = progress
            return NEED_DATA
        return self._parse(buffer, progress.pos, progress.scan, progress.stack, progress.top)

    def decode_many(self, buffer: bytearray, limit: int) -> Message | NeedData:
        """Up to ``limit`` replies in one message (``count`` of them), while they are of the
        plain kinds (simple string, integer, bulk string, null bulk) and complete; the
        first reply of any other kind comes alone, through ``decode``."""
        if self._progress is not None or limit < 2:
            return self.decode(buffer)
        data = bytes(buffer[:_MERGE_WINDOW])  # bytes: cheap to index once compiled
        size = len(data)
        max_size = self._max_size
        pos = 0
        count = 0
        while count < limit and pos < size:
            kind = data[pos]
            eol = data.find(b"\r\n", pos + 1)
            if eol < 0:
                break
            if kind == 0x2B:  # "+" simple string
                end = eol + 2
            elif kind == 0x24:  # "$" bulk string
                line = data[pos + 1 : eol]
                if line == b"-1":
                    end = eol + 2
                elif not line.isdigit() or (line[0] == 0x30 and len(line) > 1):
                    break
                else:
                    end = eol + 4 + int(line)
                    if end > size or data[end - 2] != 0x0D or data[end - 1] != 0x0A:
                        break
            elif kind == 0x3A:  # ":" integer
                line = data[pos + 1 : eol]
                digits = line[1:] if line[:1] == b"-" or line[:1] == b"+" else line
                if not digits.isdigit():
                    break
                end = eol + 2
            else:
                break
            if end > max_size:
                break
            pos = end
            count += 1
        if count < 2:
            return self.decode(buffer)
        frame = data[:pos]
        del buffer[:pos]
        return Message(_RESPONSE, frame, None, {}, _OK, None, 0, pos, None, count)

    def _parse(
        self, buffer: bytearray, pos: int, scan: int, stack: list[list[int]], top: int
    ) -> Message | NeedData:
        size = len(buffer)
        limit = self._max_size
        while True:
            if pos >= size:
                return self._incomplete(buffer, size + 1, pos, pos, stack, top)
            kind = buffer[pos]
            eol = buffer.find(b"\r\n", max(scan, pos + 1))
            if eol < 0:
                return self._incomplete(buffer, size + 1, pos, max(size - 1, pos + 1), stack, top)
            scan = 0
            if eol > limit:
                raise _too_large(eol, limit)
            line = buffer[pos + 1 : eol]
            after = eol + 2
            if not stack and kind != _ATTR:
                top = kind
            elif stack and stack[-1][1] == _STREAMED_STRING:
                if kind != 0x3B:  # ";"
                    raise _bad(f"expected a ';' chunk in a streamed string, got {chr(kind)!r}")
                length = _length(line)
                if length == 0:
                    stack.pop()
                    pos = after
                    if _complete(stack):
                        break
                    continue
                kind = 0x24  # frame the chunk like a bulk string
            if kind in _SIMPLE:
                _check_simple(kind, line)
                pos = after
            elif kind in _BULK:
                if kind == 0x24 and (line == b"-1" or line == b"?"):
                    pos = after
                    if line == b"?":
                        self._push(stack, [0, _STREAMED_STRING])
                        continue
                else:
                    end = after + _length(line)
                    if end + 2 > limit:
                        raise _too_large(end + 2, limit)
                    if end + 2 > size:
                        return self._incomplete(buffer, end + 2, pos, 0, stack, top)
                    if buffer[end] != 0x0D or buffer[end + 1] != 0x0A:
                        raise _bad("bulk string not terminated by CRLF")
                    if kind == 0x3D and (end - after < 4 or buffer[after + 3] != 0x3A):
                        raise _bad("verbatim string without a 'xxx:' format prefix")
                    pos = end + 2
                    if stack and stack[-1][1] == _STREAMED_STRING:
                        continue  # a chunk, not an element
            elif kind in _AGGREGATES:
                pos = after
                if line == b"?" and kind in _STREAMABLE:
                    self._push(stack, [0, _STREAMED_MAP if kind == 0x25 else _STREAMED])
                    continue
                if line == b"-1" and kind == 0x2A:
                    pass  # RESP2 null array: a complete element
                else:
                    count = _length(line)
                    if count > self._max_array:
                        raise _bad(f"aggregate of {count} elements (limit {self._max_array})")
                    elements = count * _AGGREGATES[kind]
                    if after + _MIN_ELEMENT * elements > limit:
                        raise _too_large(after + _MIN_ELEMENT * elements, limit)
                    if elements:
                        self._push(stack, [elements, _ATTRIBUTE if kind == _ATTR else _AGGREGATE])
                        continue
                    if kind == _ATTR:
                        continue  # an empty attribute: the value follows
            elif kind == 0x2E and stack and stack[-1][1] in (_STREAMED, _STREAMED_MAP):  # "."
                if line:
                    raise _bad("'.' with a payload")
                opened = stack.pop()
                if opened[1] == _STREAMED_MAP and opened[0] % 2:
                    raise _bad("streamed map with an odd number of elements")
                pos = after
            else:
                raise _bad(f"unknown reply type {chr(kind)!r}")
            if _complete(stack):
                break
        if pos > limit:
            raise _too_large(pos, limit)
        frame = bytes(buffer[:pos])
        del buffer[:pos]
        if top == _PUSH:
            return Message(_RESPONSE, frame, None, dict(_PUSH_PROPERTIES), _OK, None, 0, pos)
        status = _ERROR if top in _ERRORS else _OK
        return Message(_RESPONSE, frame, None, {}, status, None, 0, pos)

    def _push(self, stack: list[list[int]], entry: list[int]) -> None:
        if len(stack) >= self._max_depth:
            raise _bad(f"nesting deeper than {self._max_depth}")
        stack.append(entry)

    def _incomplete(
        self, buffer: bytearray, need: int, pos: int, scan: int, stack: list[list[int]], top: int
    ) -> NeedData:
        if need > self._max_size:
            raise _too_large(need, self._max_size)
        self._progress = _Progress(buffer, need, pos, scan, stack, top)
        return NEED_DATA


def _complete(stack: list[list[int]]) -> bool:
    """Count one finished element against the open aggregates; True when the reply is done."""
    while stack:
        entry = stack[-1]
        if entry[1] >= _STREAMED:
            entry[0] += 1
            return False
        entry[0] -= 1
        if entry[0]:
            return False
        stack.pop()
        if entry[1] == _ATTRIBUTE:
            return False  # the attributed value is still to come
    return True


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"reply of at least {size} bytes exceeds max_message_size {limit}",
        ErrorType.MESSAGE_TOO_LARGE,
    )
