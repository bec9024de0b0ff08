"""Record golden Redis replies from a real redis-server into redis_replies.json (run by hand).

    .venv/bin/python tests/codecs/data/redis_record_replies.py [path/to/redis-server]

Starts redis-server on a free loopback port (no persistence, DEBUG enabled so ``DEBUG
PROTOCOL`` can emit every RESP3 type), sends each command of ``SCRIPT`` over a raw socket
and stores exactly the bytes the server answered, read until the connection is quiet. The
codec is not involved: the file is an independent reference for its tests.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["SCRIPT", "record"]

OUT = Path(__file__).with_name("redis_replies.json")
BIG = "x" * 20_000

# (protocol after this command, command, number of replies the server sends)
SCRIPT: list[tuple[list[str], int]] = [
    (["PING"], 1),
    (["SET", "key", "value"], 1),
    (["GET", "key"], 1),
    (["GET", "missing"], 1),
    (["SET", "binary", "a\r\nb\x00c\xff"], 1),
    (["GET", "binary"], 1),
    (["SET", "big", BIG], 1),
    (["GET", "big"], 1),
    (["SET", "empty", ""], 1),
    (["GET", "empty"], 1),
    (["INCR", "counter"], 1),
    (["INCRBY", "counter", "-100"], 1),
    (["INCR", "key"], 1),
    (["NOSUCHCOMMAND", "x"], 1),
    (["RPUSH", "list", "a", "b", "c"], 1),
    (["LRANGE", "list", "0", "-1"], 1),
    (["LRANGE", "nolist", "0", "-1"], 1),
    (["LPOP", "list", "0"], 1),
    (["GET", "list"], 1),
    (["HSET", "hash", "f1", "v1", "f2", "v2"], 1),
    (["HGETALL", "hash"], 1),
    (["SADD", "set", "m1", "m2"], 1),
    (["SMEMBERS", "set"], 1),
    (["ZADD", "zset", "1.5", "a", "2", "b"], 1),
    (["ZSCORE", "zset", "a"], 1),
    (["ZRANGE", "zset", "0", "-1", "WITHSCORES"], 1),
    (["MGET", "key", "missing", "counter"], 1),
    (["XADD", "stream", "1-1", "field", "value"], 1),
    (["XRANGE", "stream", "-", "+"], 1),
    (["BLPOP", "nolist", "0.01"], 1),
    (["KEYS", "nomatch*"], 1),
    (["EXPIRE", "key", "100"], 1),
    (["TTL", "key"], 1),
    (["TYPE", "hash"], 1),
    (["ECHO", "hello world"], 1),
    (["CONFIG", "GET", "maxmemory-policy"], 1),
    (["COMMAND", "INFO", "GET"], 1),
    (["SET", "key", "value", "NX"], 1),
    (["DEBUG", "PROTOCOL", "string"], 1),
    (["DEBUG", "PROTOCOL", "integer"], 1),
    (["DEBUG", "PROTOCOL", "double"], 1),
    (["DEBUG", "PROTOCOL", "bignum"], 1),
    (["DEBUG", "PROTOCOL", "null"], 1),
    (["DEBUG", "PROTOCOL", "array"], 1),
    (["DEBUG", "PROTOCOL", "set"], 1),
    (["DEBUG", "PROTOCOL", "map"], 1),
    (["DEBUG", "PROTOCOL", "true"], 1),
    (["DEBUG", "PROTOCOL", "verbatim"], 1),
    (["HELLO", "3"], 1),
    (["PING"], 1),
    (["GET", "missing"], 1),
    (["GET", "key"], 1),
    (["HGETALL", "hash"], 1),
    (["SMEMBERS", "set"], 1),
    (["ZSCORE", "zset", "a"], 1),
    (["ZRANGE", "zset", "0", "-1", "WITHSCORES"], 1),
    (["LRANGE", "nolist", "0", "-1"], 1),
    (["BLPOP", "nolist", "0.01"], 1),
    (["XRANGE", "stream", "-", "+"], 1),
    (["CONFIG", "GET", "maxmemory-policy"], 1),
    (["INCR", "key"], 1),
    (["DEBUG", "PROTOCOL", "string"], 1),
    (["DEBUG", "PROTOCOL", "integer"], 1),
    (["DEBUG", "PROTOCOL", "double"], 1),
    (["DEBUG", "PROTOCOL", "bignum"], 1),
    (["DEBUG", "PROTOCOL", "null"], 1),
    (["DEBUG", "PROTOCOL", "array"], 1),
    (["DEBUG", "PROTOCOL", "set"], 1),
    (["DEBUG", "PROTOCOL", "map"], 1),
    (["DEBUG", "PROTOCOL", "attrib"], 1),
    (["DEBUG", "PROTOCOL", "push"], 2),
    (["DEBUG", "PROTOCOL", "verbatim"], 1),
    (["DEBUG", "PROTOCOL", "true"], 1),
    (["DEBUG", "PROTOCOL", "false"], 1),
    (["SUBSCRIBE", "news"], 1),
]


def _pack(arguments: list[str]) -> bytes:
    out = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        raw = argument.encode("latin-1")
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _read_until_quiet(sock: socket.socket, quiet: float = 0.25) -> bytes:
    chunks: list[bytes] = []
    sock.settimeout(5.0)
    chunks.append(sock.recv(1 << 20))  # the first byte may take a while (BLPOP timeout)
    sock.settimeout(quiet)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def record(server: str) -> None:
    port = _free_port()
    version = subprocess.run([server, "--version"], capture_output=True, text=True, check=True)
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    arguments += ["--enable-debug-command", "yes", "--daemonize", "no"]
    process = subprocess.Popen(
        [server, *arguments],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        exchanges = []
        protocol = 2
        with sock:
            for command, replies in SCRIPT:
                sock.sendall(_pack(command))
                answer = _read_until_quiet(sock)
                exchanges.append(
                    {
                        "protocol": protocol,
                        "command": [a if a != BIG else "x * 20000" for a in command],
                        "replies": replies,
                        "bytes": answer.decode("latin-1"),
                    }
                )
                if command[0] == "HELLO":
                    protocol = int(command[1])
        document = {
            "what": "raw reply bytes from redis-server, one entry per command sent",
            "server": version.stdout.strip(),
            "how": "tests/codecs/data/redis_record_replies.py (raw socket, read until quiet)",
            "encoding": "bytes are stored as latin-1 text: one char per byte",
            "exchanges": exchanges,
        }
        OUT.write_text(json.dumps(document, indent=1) + "\n")
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else shutil.which("redis-server")
    if path is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    record(path)
    print(f"wrote {OUT}")
