"""Reading one RESP2/RESP3 reply into Python values, for the proxy's own control replies.

The data path never materialises replies (reply.py only frames them); the proxy's own
questions to Redis (``CLUSTER SHARDS``, ``CLUSTER SLOTS``) and the merging of split
commands need the values. Types follow https://github.com/redis/redis-specifications/blob/
master/protocol/RESP3.md:

- simple string ``+`` -> ``str``; bulk ``$`` and verbatim ``=`` (format prefix dropped) ->
  ``bytes``; integer ``:`` and big number ``(`` -> ``int``; double ``,`` -> ``float``;
  boolean ``#`` -> ``bool``; null ``_``, ``$-1`` and ``*-1`` -> ``None``;
- array ``*``, set ``~`` and push ``>`` -> ``list``; map ``%`` -> ``dict`` (keys that are
  unhashable become their ``repr``; redis never sends them);
- error ``-`` and bulk error ``!`` -> :class:`RespError` (a value, not raised);
- an attribute ``|`` is read and dropped; streamed aggregates (``?``) are refused (redis
  never streams the replies read here).

Malformed input raises ``ProtocolError(BAD_RESPONSE)``; an incomplete reply raises it too
(callers hand over whole replies, framed by reply.py).
"""

from __future__ import annotations

from typing import Final

from metaprotocol.core.message import ErrorType, ProtocolError

__all__ = ["RespError", "RespValue", "read_value", "read_values"]

_MAX_DEPTH: Final = 32


class RespError:
    """An error reply as a value: ``code`` is its first word (``MOVED``, ``ERR``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    @property
    def code(self) -> str:
        return self.text.split(" ", 1)[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RespError) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RespError({self.text!r})"


RespValue = (
    str | bytes | int | float | bool | None | RespError
    | list["RespValue"] | dict[object, "RespValue"]
)  # fmt: skip


def _bad(message: str) -> ProtocolError:
    return ProtocolError(f"bad redis reply: {message}", ErrorType.BAD_RESPONSE)


def read_value(data: bytes) -> RespValue:
    """The one reply ``data`` holds (nothing may follow it)."""
    value, end = _read(data, 0, 0)
    if end != len(data):
        raise _bad(f"{len(data) - end} bytes after the reply")
    return value


def read_values(data: bytes) -> list[RespValue]:
    """Every reply in ``data``, in order (a pipeline's answers)."""
    values = []
    pos = 0
    while pos < len(data):
        value, pos = _read(data, pos, 0)
        values.append(value)
    return values


def _line(data: bytes, pos: int) -> tuple[bytes, int]:
    eol = data.find(b"\r\n", pos)
    if eol < 0:
        raise _bad("incomplete reply")
    return data[pos:eol], eol + 2


def _integer(line: bytes) -> int:
    digits = line[1:] if line[:1] in (b"-", b"+") else line
    if not digits.isdigit():
        raise _bad(f"invalid integer {line!r}")
    return int(line)


def _bulk(data: bytes, line: bytes, pos: int) -> tuple[bytes, int]:
    length = _integer(line)
    end = pos + length
    if length < 0 or data[end : end + 2] != b"\r\n":
        raise _bad("bulk string not terminated by CRLF" if length >= 0 else "negative length")
    return data[pos:end], end + 2


def _read(data: bytes, pos: int, depth: int) -> tuple[RespValue, int]:
    if depth > _MAX_DEPTH:
        raise _bad(f"nesting deeper than {_MAX_DEPTH}")
    if pos >= len(data):
        raise _bad("incomplete reply")
    kind = data[pos : pos + 1]
    line, pos = _line(data, pos + 1)
    if kind == b"+":
        return line.decode("utf-8", "surrogateescape"), pos
    if kind == b"-":
        return RespError(line.decode("utf-8", "surrogateescape")), pos
    if kind == b":" or kind == b"(":
        return _integer(line), pos
    if kind == b"_":
        if line:
            raise _bad("null with a payload")
        return None, pos
    if kind == b"#":
        if line not in (b"t", b"f"):
            raise _bad(f"invalid boolean {line!r}")
        return line == b"t", pos
    if kind == b",":
        try:
            return float(line), pos
        except ValueError:
            raise _bad(f"invalid double {line!r}") from None
    if kind in (b"$", b"!", b"="):
        if kind == b"$" and line == b"-1":
            return None, pos
        body, pos = _bulk(data, line, pos)
        if kind == b"!":
            return RespError(body.decode("utf-8", "surrogateescape")), pos
        if kind == b"=":
            if body[3:4] != b":":
                raise _bad("verbatim string without a 'xxx:' format prefix")
            body = body[4:]
        return body, pos
    if kind in (b"*", b"~", b">", b"%", b"|"):
        if kind == b"*" and line == b"-1":
            return None, pos
        count = _integer(line)
        if count < 0 or count > len(data):  # each element takes at least 3 bytes
            raise _bad(f"invalid aggregate length {line!r}")
        if kind in (b"%", b"|"):
            mapping: dict[object, RespValue] = {}
            for _ in range(count):
                key, pos = _read(data, pos, depth + 1)
                value, pos = _read(data, pos, depth + 1)
                mapping[key if isinstance(key, (str, bytes, int, float)) else repr(key)] = value
            if kind == b"|":
                return _read(data, pos, depth)  # an attribute: the value after it counts
            return mapping, pos
        items: list[RespValue] = []
        for _ in range(count):
            item, pos = _read(data, pos, depth + 1)
            items.append(item)
        return items, pos
    raise _bad(f"unknown reply type {kind!r}")
