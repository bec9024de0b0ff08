"""Where the keys of a Redis command are, for commands with more than one key.

A command's ``key`` property is its first argument; most commands have one key and it is
that one. The commands below have several (or their first key elsewhere), listed with
where their keys are, as redis-server's own key specs say (``COMMAND INFO``,
``COMMAND GETKEYS``; tests/codecs/test_redis_keys.py checks every entry against a real
server). :data:`SPLITS` names the ones the proxy splits per target and how their answers
merge; every other command here must have all its keys on one target (Redis Cluster's
``CROSSSLOT`` rule: they are atomic, or their keys feed one another).

Commands refused earlier (blocking pops, transactions, see commands.py) are not listed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from metaprotocol.core.message import Message

__all__ = [
    "KEY_SPECS",
    "READ_COMMANDS",
    "SPLITS",
    "KeySpec",
    "Merge",
    "arguments_of",
    "key_positions",
]


class Merge(enum.Enum):
    """How the answers of a split command's parts become the client's one answer."""

    VALUES = "values"  # MGET: one array, elements back in the client's key order
    ALL_OK = "all_ok"  # MSET: +OK when every part answered +OK
    SUM = "sum"  # DEL, UNLINK, EXISTS, TOUCH: the parts' integers added up


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Keys at ``first``, ``first + step``, ... up to ``last`` (negative: from the end,
    -1 the last argument), as redis's legacy ``(firstkey, lastkey, step)``; with
    ``numkeys`` > 0 the argument at that index counts the keys that follow it (``last``
    is ignored, ``first`` < ``numkeys`` names a key before the count, e.g. ZUNIONSTORE's
    destination); with ``keyword`` the keys follow that word (``STREAMS``: the first half of
    what follows, searched from ``first``, as redis does; ``STORE``/``STOREDIST``: the one
    argument after it, besides the key at ``first``)."""

    first: int
    last: int = -1
    step: int = 1
    numkeys: int = 0
    keyword: str = ""


_ALL: Final = KeySpec(1)
_PAIRS: Final = KeySpec(1, -1, 2)
_TWO: Final = KeySpec(1, 2)
_COUNTED: Final = KeySpec(2, numkeys=1)  # ZDIFF numkeys key [key ...]
_SCRIPT: Final = KeySpec(3, numkeys=2)  # EVAL script numkeys key [key ...] arg ...
_DEST_COUNTED: Final = KeySpec(1, numkeys=2)  # ZUNIONSTORE dest numkeys key [key ...]
_STORE: Final = KeySpec(1, 1, keyword="STORE")  # SORT key ... STORE dest

KEY_SPECS: Final[dict[str, KeySpec]] = {
    # split per target (see SPLITS)
    "MGET": _ALL,
    "DEL": _ALL,
    "UNLINK": _ALL,
    "EXISTS": _ALL,
    "TOUCH": _ALL,
    "MSET": _PAIRS,
    # one target only
    "MSETNX": _PAIRS,
    "SDIFF": _ALL,
    "SINTER": _ALL,
    "SUNION": _ALL,
    "SDIFFSTORE": _ALL,
    "SINTERSTORE": _ALL,
    "SUNIONSTORE": _ALL,
    "PFCOUNT": _ALL,
    "PFMERGE": _ALL,
    "RENAME": _TWO,
    "RENAMENX": _TWO,
    "SMOVE": _TWO,
    "LMOVE": _TWO,
    "RPOPLPUSH": _TWO,
    "COPY": _TWO,
    "LCS": _TWO,
    "ZRANGESTORE": _TWO,
    "GEOSEARCHSTORE": _TWO,
    "BITOP": KeySpec(2),
    "ZDIFF": _COUNTED,
    "ZINTER": _COUNTED,
    "ZUNION": _COUNTED,
    "SINTERCARD": _COUNTED,
    "ZINTERCARD": _COUNTED,
    "LMPOP": _COUNTED,
    "ZMPOP": _COUNTED,
    "ZDIFFSTORE": _DEST_COUNTED,
    "ZINTERSTORE": _DEST_COUNTED,
    "ZUNIONSTORE": _DEST_COUNTED,
    "EVAL": _SCRIPT,
    "EVALSHA": _SCRIPT,
    "EVAL_RO": _SCRIPT,
    "EVALSHA_RO": _SCRIPT,
    "FCALL": _SCRIPT,
    "FCALL_RO": _SCRIPT,
    "XREAD": KeySpec(1, keyword="STREAMS"),
    "XREADGROUP": KeySpec(4, keyword="STREAMS"),  # after GROUP <group> <consumer>
    "SORT": _STORE,
    "GEORADIUS": _STORE,
    "GEORADIUSBYMEMBER": _STORE,
}
"""Commands with more than one key, or whose key is not their first argument."""

SPLITS: Final[dict[str, Merge]] = {
    "MGET": Merge.VALUES,
    "MSET": Merge.ALL_OK,
    "DEL": Merge.SUM,
    "UNLINK": Merge.SUM,
    "EXISTS": Merge.SUM,
    "TOUCH": Merge.SUM,
}
"""The commands split per target, and how their parts' answers merge."""


READ_COMMANDS: Final = frozenset({
    "BITCOUNT", "BITFIELD_RO", "BITPOS", "DUMP", "EVALSHA_RO", "EVAL_RO", "EXISTS",
    "EXPIRETIME", "FCALL_RO", "GEODIST", "GEOHASH", "GEOPOS", "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO", "GEOSEARCH", "GET", "GETBIT", "GETRANGE", "HEXISTS", "HGET", "HGETALL",
    "HKEYS", "HLEN", "HMGET", "HRANDFIELD", "HSCAN", "HSTRLEN", "HVALS", "LCS", "LINDEX",
    "LLEN", "LPOS", "LRANGE", "MEMORY", "MGET", "OBJECT", "PEXPIRETIME", "PFCOUNT", "PTTL",
    "SCARD", "SDIFF", "SINTER", "SINTERCARD", "SISMEMBER", "SMEMBERS", "SMISMEMBER",
    "SORT_RO", "SRANDMEMBER", "SSCAN", "STRLEN", "SUBSTR", "SUNION", "TOUCH", "TTL", "TYPE",
    "XINFO", "XLEN", "XPENDING", "XRANGE", "XREAD", "XREVRANGE", "ZCARD", "ZCOUNT", "ZDIFF",
    "ZINTER", "ZINTERCARD", "ZLEXCOUNT", "ZMSCORE", "ZRANDMEMBER", "ZRANGE", "ZRANGEBYLEX",
    "ZRANGEBYSCORE", "ZRANK", "ZREVRANGE", "ZREVRANGEBYLEX", "ZREVRANGEBYSCORE", "ZREVRANK",
    "ZSCAN", "ZSCORE", "ZUNION",
})  # fmt: skip
"""Commands with keys that only read them (redis's ``readonly`` flag): what a Redis Cluster
with ``read_from: replica_preferred`` may send to a replica. ``MEMORY``, ``OBJECT`` and
``XINFO`` stand for their keyed subcommands (``MEMORY USAGE``, ``OBJECT ENCODING``,
``XINFO STREAM``...), all read-only."""


def key_positions(spec: KeySpec, arguments: Sequence[bytes]) -> list[int] | None:
    """Indexes of the key arguments (``arguments[0]`` is the command) per ``spec``; None
    when the arguments do not fit it (a wrong count, a bad ``numkeys``): the server then
    answers its own error, so the command goes on whole."""
    size = len(arguments)
    if spec.keyword:
        return _keyword_positions(spec, arguments)
    if spec.numkeys:
        if spec.numkeys >= size:
            return None
        raw = arguments[spec.numkeys]
        if not raw.isdigit():
            return None
        count = int(raw)
        start = spec.numkeys + 1
        if count < 1 or start + count > size:
            return None
        before = list(range(spec.first, spec.numkeys)) if spec.first < spec.numkeys else []
        return before + list(range(start, start + count))
    last = spec.last + size if spec.last < 0 else spec.last
    if last >= size or spec.first > last:
        return None
    if (last + 1 - spec.first) % spec.step:
        return None  # MSET k v k: a pair is missing
    return list(range(spec.first, last + 1, spec.step))


def _keyword_positions(spec: KeySpec, arguments: Sequence[bytes]) -> list[int] | None:
    size = len(arguments)
    upper = [argument.upper() for argument in arguments]
    if spec.keyword == "STREAMS":
        if b"STREAMS" not in upper[spec.first :]:
            return None
        start = upper.index(b"STREAMS", spec.first) + 1
        rest = size - start
        if rest < 2 or rest % 2:
            return None
        return list(range(start, start + rest // 2))
    if size <= spec.first:
        return None
    positions = [spec.first]
    for index in range(spec.first + 1, size - 1):
        if upper[index] in (b"STORE", b"STOREDIST"):
            positions.append(index + 1)
    return positions


def arguments_of(message: Message) -> list[bytes]:
    """Every argument of a decoded request: its RESP array (the converted array for an
    inline command, see request.py), past any empty commands the frame starts with."""
    data = message.codec_data if isinstance(message.codec_data, bytes) else message.frame
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : eol])
        pos = eol + 2
        if count > 0:
            break
    arguments = []
    for _ in range(count):
        eol = data.index(b"\r\n", pos)
        start = eol + 2
        end = start + int(data[pos + 1 : eol])
        arguments.append(data[start:end])
        pos = end + 2
    return arguments
