"""Record golden Redis Cluster replies into redis_cluster_replies.json (run by hand).

    .venv/bin/python -m tests.codecs.data.redis_cluster_record

Starts a real Redis Cluster of three primaries with one replica each
(tests/e2e/redis_clusters.py), and stores exactly the bytes redis-server answered to
``CLUSTER SHARDS`` and ``CLUSTER SLOTS`` in RESP2 and RESP3, a ``-MOVED`` and an ``-ASK``
redirection (the ASK from a slot set MIGRATING by hand, then set back to STABLE), and
``CLUSTER KEYSLOT`` for a set of keys. Each reply is read off a raw socket and framed by
the proxy's reply decoder (only to know where it ends): the bytes are the server's.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.e2e.redis_clusters import command, raw_command, redis_cluster

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.redis.request import multibulk
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA

OUT = Path(__file__).with_name("redis_cluster_replies.json")

KEYSLOT_KEYS = [
    "123456789", "", "a", "foo", "bar", "user:1000", "{user1000}.following",
    "{user1000}.followers", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "{}", "}{", "{a",
    "a}", "{", "}", "session:{abc}:x", "\u00e9t\u00e9", "x" * 300,
]  # fmt: skip


def _resp3(port: int, *arguments: str) -> bytes:
    """The reply to one command sent after ``HELLO 3`` on the same connection."""
    codec = RedisCodec(Side.UPSTREAM, {}, 1 << 26)
    words = [a.encode() for a in arguments]
    buffer = bytearray()
    replies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(multibulk([b"HELLO", b"3"]) + multibulk(words))
        while len(replies) < 2:
            buffer += sock.recv(65536)
            while len(replies) < 2:
                reply = codec.decode(buffer)
                if reply is NEED_DATA:
                    break
                replies.append(reply.frame)
    return replies[1]


def _text(data: bytes) -> str:
    return data.decode("latin-1")


def main() -> None:
    with redis_cluster(masters=3, replicas=1) as cluster:
        port = cluster.ports[0]
        version = command(port, "INFO", "server")
        assert isinstance(version, bytes)
        server = next(line for line in version.split(b"\r\n") if line.startswith(b"redis_version"))
        exchanges = {
            "shards_resp2": raw_command(port, "CLUSTER", "SHARDS"),
            "shards_resp3": _resp3(port, "CLUSTER", "SHARDS"),
            "slots_resp2": raw_command(port, "CLUSTER", "SLOTS"),
            "slots_resp3": _resp3(port, "CLUSTER", "SLOTS"),
        }
        # A MOVED: ask every primary for a key until one is not its owner.
        for candidate in cluster.ports:
            reply = raw_command(candidate, "GET", "foo")
            if reply.startswith(b"-MOVED"):
                exchanges["moved"] = reply
                exchanges["moved_asked_port"] = str(candidate).encode()
                break
        # An ASK: the owner of "foo"'s slot marks it MIGRATING to another primary.
        slot = command(port, "CLUSTER", "KEYSLOT", "foo")
        assert isinstance(slot, int)
        owner_port = int(exchanges["moved"].split(b":")[-1]) if "moved" in exchanges else port
        owner_id = command(owner_port, "CLUSTER", "MYID")
        other_port = next(
            p for p in cluster.ports
            if p != owner_port and b"master" in _role(p)
        )  # fmt: skip
        other_id = command(other_port, "CLUSTER", "MYID")
        assert isinstance(owner_id, bytes) and isinstance(other_id, bytes)
        command(other_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", owner_id)
        command(owner_port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", other_id)
        exchanges["ask"] = raw_command(owner_port, "GET", "foo")
        exchanges["asking"] = raw_command(other_port, "ASKING")
        command(owner_port, "CLUSTER", "SETSLOT", str(slot), "STABLE")
        command(other_port, "CLUSTER", "SETSLOT", str(slot), "STABLE")
        keyslots = {key: command(port, "CLUSTER", "KEYSLOT", key) for key in KEYSLOT_KEYS}
        data = {
            "what": "raw reply bytes from a real Redis Cluster (3 primaries, 1 replica each)",
            "server": _text(server),
            "how": "tests/codecs/data/redis_cluster_record.py",
            "encoding": "bytes are stored as latin-1 text: one char per byte",
            "asked_port": port,
            "primaries": sorted(p for p in cluster.ports if b"master" in _role(p)),
            "replicas": sorted(p for p in cluster.ports if b"slave" in _role(p)),
            "exchanges": {name: _text(value) for name, value in exchanges.items()},
            "keyslot": keyslots,
        }
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n")
    print(f"wrote {OUT}")


def _role(port: int) -> bytes:
    info = command(port, "INFO", "replication")
    assert isinstance(info, bytes)
    return next(line for line in info.split(b"\r\n") if line.startswith(b"role:"))


if __name__ == "__main__":
    main()
