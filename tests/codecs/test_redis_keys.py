"""The multi-key command table (codecs/redis/keys.py) against a real redis-server: every
entry finds the keys ``COMMAND GETKEYS`` finds, and every multi-key command the server
knows (``COMMAND``) is in the table, refused by the proxy, or listed here with a reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metaprotocol.codecs.redis.commands import NON_POOLABLE_COMMANDS
from metaprotocol.codecs.redis.keys import KEY_SPECS, READ_COMMANDS, SPLITS, key_positions
from metaprotocol.codecs.redis.values import RespError
from tests.e2e.redis_clusters import command
from tests.e2e.servers import redis_server

EXAMPLES: list[tuple[str, ...]] = [
    ("MGET", "a", "b", "c"),
    ("DEL", "a", "b"),
    ("UNLINK", "a"),
    ("EXISTS", "a", "a", "b"),
    ("TOUCH", "a", "b"),
    ("MSET", "a", "1", "b", "2"),
    ("MSETNX", "a", "1", "b", "2", "c", "3"),
    ("SDIFF", "a", "b"),
    ("SINTER", "a", "b", "c"),
    ("SUNION", "a"),
    ("SDIFFSTORE", "d", "a", "b"),
    ("SINTERSTORE", "d", "a"),
    ("SUNIONSTORE", "d", "a", "b"),
    ("PFCOUNT", "a", "b"),
    ("PFMERGE", "d", "a", "b"),
    ("RENAME", "a", "b"),
    ("RENAMENX", "a", "b"),
    ("SMOVE", "a", "b", "member"),
    ("LMOVE", "a", "b", "LEFT", "RIGHT"),
    ("RPOPLPUSH", "a", "b"),
    ("COPY", "a", "b", "REPLACE"),
    ("LCS", "a", "b", "LEN"),
    ("ZRANGESTORE", "d", "a", "0", "-1"),
    ("GEOSEARCHSTORE", "d", "a", "FROMLONLAT", "0", "0", "BYRADIUS", "1", "km"),
    ("BITOP", "AND", "d", "a", "b"),
    ("ZDIFF", "2", "a", "b", "WITHSCORES"),
    ("ZINTER", "3", "a", "b", "c"),
    ("ZUNION", "1", "a"),
    ("SINTERCARD", "2", "a", "b", "LIMIT", "1"),
    ("ZINTERCARD", "2", "a", "b"),
    ("LMPOP", "2", "a", "b", "LEFT"),
    ("ZMPOP", "2", "a", "b", "MIN", "COUNT", "2"),
    ("ZDIFFSTORE", "d", "2", "a", "b"),
    ("ZINTERSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"),
    ("ZUNIONSTORE", "d", "1", "a"),
    ("EVAL", "return 1", "2", "a", "b", "arg"),
    ("EVALSHA", "a" * 40, "1", "a", "arg"),
    ("EVAL_RO", "return 1", "1", "a"),
    ("EVALSHA_RO", "a" * 40, "2", "a", "b"),
    ("FCALL", "f", "2", "a", "b", "x"),
    ("FCALL_RO", "f", "1", "a"),
    ("XREAD", "COUNT", "2", "STREAMS", "a", "b", "0", "0"),
    ("XREADGROUP", "GROUP", "streams", "c", "NOACK", "STREAMS", "a", "b", ">", ">"),
    ("SORT", "a", "LIMIT", "0", "1", "STORE", "d"),
    ("SORT", "a", "ALPHA"),
    ("GEORADIUS", "a", "0", "0", "1", "km", "STORE", "d"),
    ("GEORADIUS", "a", "0", "0", "1", "km", "STOREDIST", "d"),
    ("GEORADIUSBYMEMBER", "a", "m", "1", "km", "STORE", "d"),
]

NOT_IN_THE_TABLE = {
    "SORT_RO": "one declared key; the keys its BY/GET patterns read are not declared",
    "MIGRATE": "moves keys to a server it names itself: an operator command",
}


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with redis_server() as server_port:
        yield server_port


@pytest.mark.parametrize("example", EXAMPLES, ids=" ".join)
def test_key_positions_agree_with_command_getkeys(port: int, example: tuple[str, ...]) -> None:
    positions = key_positions(KEY_SPECS[example[0]], [word.encode() for word in example])
    assert positions is not None
    keys = command(port, "COMMAND", "GETKEYS", *example)
    assert not isinstance(keys, RespError), keys
    assert [example[i].encode() for i in positions] == keys


def test_every_example_table_entry_is_exercised() -> None:
    assert {example[0] for example in EXAMPLES} == set(KEY_SPECS)
    assert set(SPLITS) <= set(KEY_SPECS)


def test_every_multi_key_command_of_the_server_is_accounted_for(port: int) -> None:
    reply = command(port, "COMMAND")
    assert isinstance(reply, list)
    multi_key = set()
    for entry in reply:
        assert isinstance(entry, list)
        name, _, flags, first, last = entry[:5]
        assert isinstance(name, bytes) and isinstance(flags, list)
        assert isinstance(first, int) and isinstance(last, int)
        if "movablekeys" in flags or last < 0 or last > first:
            multi_key.add(name.decode().upper())
    missing = multi_key - set(KEY_SPECS) - NON_POOLABLE_COMMANDS - set(NOT_IN_THE_TABLE)
    assert missing == set()


def _keyed_readonly(flags: object, first: object) -> bool:
    assert isinstance(flags, list) and isinstance(first, int)
    return "readonly" in flags and (first > 0 or "movablekeys" in flags)


def test_read_commands_are_the_servers_keyed_readonly_commands(port: int) -> None:
    reply = command(port, "COMMAND")
    assert isinstance(reply, list)
    reads = set()
    for entry in reply:
        assert isinstance(entry, list) and isinstance(entry[0], bytes)
        subcommands = entry[9] if len(entry) > 9 else []
        assert isinstance(subcommands, list)
        keyed = [(entry[2], entry[3])]
        for sub in subcommands:
            assert isinstance(sub, list)
            keyed.append((sub[2], sub[3]))
        if any(_keyed_readonly(flags, first) for flags, first in keyed):
            reads.add(entry[0].decode().upper())
    assert reads == READ_COMMANDS
