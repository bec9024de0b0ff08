"""Global rate limiting in Redis: answers ``ExternalCall(kind="global_ratelimit")``.

Each call runs one Lua script (atomic INCR, then PEXPIRE on the first hit) on a fixed-window
key ``domain|k=v|...|window`` where ``window`` is ``floor(wall_time / unit)``; the request is
allowed while the counter is at most ``limit``. The RESP wire work is sans-IO here
(``encode_command``, ``RespReader``); three small clients do the IO: asyncio (pipelined
over one ``asyncio.Protocol`` connection), anyio (one request at a time) and blocking.
A client raises ``RedisUnavailable`` when Redis cannot answer; the adapter then completes
the call with ``error=...`` so the core applies the filter's failure mode. With
``global_ratelimit_redis.tls`` (a cluster's ``tls`` settings) each client connects over TLS
(``tls_of`` builds the context and the name to check).

Each new connection first logs in (``AUTH [username] password``, when
``global_ratelimit_redis.auth`` is set) and selects the database (``SELECT db``, when not
0): ``login_commands``. A refused login makes the call fail like an unreachable Redis; the
error names the refusal, never the password.
"""

from __future__ import annotations

import asyncio
import enum
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import anyio
import anyio.abc

from metaprotocol.core.config import RateLimitRedisConfig
from metaprotocol.core.secrets import Credentials
from metaprotocol.tls import client_context, server_hostname

__all__ = [
    "NEED",
    "RATE_LIMIT_SCRIPT",
    "AnyioRedisRateLimiter",
    "AsyncioRedisRateLimiter",
    "BlockingRedisRateLimiter",
    "RedisUnavailable",
    "RespError",
    "RespReader",
    "check_login",
    "encode_command",
    "login_commands",
    "parse_redis_address",
    "rate_limit_command",
]

RATE_LIMIT_SCRIPT = (
    "local n = redis.call('INCR', KEYS[1]) "
    "if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end "
    "return n"
)
DEFAULT_TIMEOUT = 1.0


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer properly."""


class RespError(Exception):
    """An error reply (``-ERR ...``) from Redis."""


class _Need(enum.Enum):
    NEED = "need"


NEED = _Need.NEED


def encode_command(*args: str | bytes | int) -> bytes:
    """A RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class RespReader:
    """Incremental RESP2 reply parser: ``feed(data)``, then ``get()`` until it returns NEED."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def get(self) -> Any:
        """The next complete reply (errors come back as ``RespError`` values) or ``NEED``."""
        result = self._parse(0)
        if result is NEED:
            return NEED
        value, end = result
        del self._buf[:end]
        return value

    def _parse(self, pos: int) -> Any:
        eol = self._buf.find(b"\r\n", pos)
        if eol < 0:
            return NEED
        kind, line = self._buf[pos : pos + 1], bytes(self._buf[pos + 1 : eol])
        nxt = eol + 2
        if kind == b"+":
            return line.decode(), nxt
        if kind == b"-":
            return RespError(line.decode("utf-8", "replace")), nxt
        if kind == b":":
            return int(line), nxt
        if kind == b"$":
            size = int(line)
            if size < 0:
                return None, nxt
            if len(self._buf) < nxt + size + 2:
                return NEED
            return bytes(self._buf[nxt : nxt + size]), nxt + size + 2
        if kind == b"*":
            count = int(line)
            if count < 0:
                return None, nxt
            items: list[Any] = []
            for _ in range(count):
                sub = self._parse(nxt)
                if sub is NEED:
                    return NEED
                items.append(sub[0])
                nxt = sub[1]
            return items, nxt
        raise RedisUnavailable(f"unexpected RESP reply type {bytes(kind)!r}")


def parse_redis_address(value: Any) -> tuple[str, int]:
    """``host:port``, ``redis://host:port[/db]`` or ``{address: ...}`` / ``{host, port}``."""
    if isinstance(value, Mapping):
        if "address" in value:
            return parse_redis_address(value["address"])
        return str(value.get("host", "127.0.0.1")), int(value.get("port", 6379))
    text = str(value)
    if text.startswith("redis://"):
        text = text[len("redis://") :].split("/", 1)[0]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"global_ratelimit_redis: expected host:port, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def rate_limit_command(payload: Mapping[str, Any], wall_time: float) -> tuple[bytes, int]:
    """``(EVAL command bytes, limit)`` for one ``global_ratelimit`` payload."""
    unit = float(payload.get("unit", 1.0))
    if unit <= 0:
        raise ValueError("global_ratelimit: unit must be positive")
    limit = int(payload["limit"])
    descriptor: Sequence[Sequence[str]] = payload.get("descriptor", ())
    window = math.floor(wall_time / unit)
    key = "|".join([str(payload["domain"]), *(f"{k}={v}" for k, v in descriptor), str(window)])
    expire_ms = max(1, math.ceil(unit * 1000))
    return encode_command("EVAL", RATE_LIMIT_SCRIPT, 1, key, expire_ms), limit


def login_commands(auth: Credentials | None, db: int) -> list[tuple[str, bytes]]:
    """``(name, RESP command)`` pairs a new connection sends before anything else; each
    must be answered ``+OK`` (see ``check_login``)."""
    commands: list[tuple[str, bytes]] = []
    if auth is not None:
        password = auth.password.reveal()
        if auth.username is None:
            commands.append(("AUTH", encode_command("AUTH", password)))
        else:
            commands.append(("AUTH", encode_command("AUTH", auth.username, password)))
    if db:
        commands.append(("SELECT", encode_command("SELECT", db)))
    return commands


def check_login(name: str, reply: Any) -> None:
    """Raise ``RedisUnavailable`` unless ``reply`` accepts the login command ``name``."""
    if reply != "OK":
        shown = str(reply) if isinstance(reply, RespError) else type(reply).__name__
        raise RedisUnavailable(f"redis refused {name}: {shown}")


def tls_of(config: RateLimitRedisConfig) -> tuple[ssl.SSLContext | None, str | None]:
    """The SSL context (reading the files: may raise ``TlsError``) and server name the
    clients connect with; ``(None, None)`` for plaintext."""
    if config.tls is None:
        return None, None
    return client_context(config.tls), server_hostname(config.tls, config.host)


def _allowed(reply: Any, limit: int) -> bool:
    if isinstance(reply, RespError):
        raise RedisUnavailable(f"redis error: {reply}")
    if not isinstance(reply, int):
        raise RedisUnavailable(f"unexpected redis reply {reply!r}")
    return reply <= limit


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = RespReader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop: no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.get()) is not NEED:
                if self.waiters:
                    waiter = self.waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(reply)
        except (RedisUnavailable, ValueError) as exc:
            self._fail(RedisUnavailable(str(exc)))
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(RedisUnavailable(f"connection lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)


class AsyncioRedisRateLimiter:
    """Pipelines calls over one lazily (re)connected connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        wall_clock: Callable[[], float] = time.time,
        auth: Credentials | None = None,
        db: int = 0,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._wall_clock = wall_clock
        self._login = login_commands(auth, db)
        self._tls, self._tls_hostname = tls, tls_hostname
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Future[_RespProtocol] | None = None
        self.failures = 0

    @classmethod
    def from_config(cls, config: RateLimitRedisConfig) -> AsyncioRedisRateLimiter:
        tls, hostname = tls_of(config)
        return cls(
            config.host, config.port, auth=config.auth, db=config.db, tls=tls, tls_hostname=hostname
        )

    async def _log_in(self, protocol: _RespProtocol) -> None:
        if not self._login:
            return
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Any]] = []
        for _, command in self._login:
            waiter: asyncio.Future[Any] = loop.create_future()
            protocol.waiters.append(waiter)
            waiters.append(waiter)
            assert protocol.transport is not None
            protocol.transport.write(command)
        for (name, _), waiter in zip(self._login, waiters, strict=True):
            check_login(name, await waiter)

    async def _connection(self) -> _RespProtocol:
        if self._protocol is not None and not self._protocol.lost:
            return self._protocol
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            try:
                _, protocol = await loop.create_connection(
                    _RespProtocol,
                    self.host,
                    self.port,
                    ssl=self._tls,
                    server_hostname=self._tls_hostname,
                )
            except OSError as exc:
                error = RedisUnavailable(f"connect to {self.host}:{self.port}: {exc}")
                self._connecting.set_exception(error)
                self._connecting.exception()  # mark retrieved when nobody else waits
                self._connecting = None
                raise error from exc
            try:
                await self._log_in(protocol)
            except BaseException as exc:
                if protocol.transport is not None:
                    protocol.transport.abort()
                failed = exc if isinstance(exc, RedisUnavailable) else RedisUnavailable(repr(exc))
                self._connecting.set_exception(failed)
                self._connecting.exception()
                self._connecting = None
                raise
            self._protocol = protocol
            self._connecting.set_result(protocol)
            self._connecting = None
            return protocol
        return await asyncio.shield(self._connecting)

    async def check(self, payload: Mapping[str, Any]) -> bool:
        """True when allowed, False when over the limit; raises ``RedisUnavailable``."""
        command, limit = rate_limit_command(payload, self._wall_clock())
        try:
            async with asyncio.timeout(self.timeout):
                protocol = await self._connection()
                waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                protocol.waiters.append(waiter)
                assert protocol.transport is not None
                protocol.transport.write(command)
                reply = await waiter
            return _allowed(reply, limit)
        except TimeoutError as exc:
            self.failures += 1
            self._reset()
            raise RedisUnavailable(f"redis timed out after {self.timeout}s") from exc
        except RedisUnavailable:
            self.failures += 1
            raise

    def _reset(self) -> None:
        # After a timeout the reply order is unknown: start over on a new connection.
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abort()
        self._protocol = None

    async def aclose(self) -> None:
        self._reset()


class AnyioRedisRateLimiter:
    """One request at a time over one lazily (re)connected connection (trio or asyncio)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        wall_clock: Callable[[], float] = time.time,
        auth: Credentials | None = None,
        db: int = 0,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._wall_clock = wall_clock
        self._login = login_commands(auth, db)
        self._tls, self._tls_hostname = tls, tls_hostname
        self._stream: anyio.abc.ByteStream | None = None
        self._lock = anyio.Lock()
        self.failures = 0

    @classmethod
    def from_config(cls, config: RateLimitRedisConfig) -> AnyioRedisRateLimiter:
        tls, hostname = tls_of(config)
        return cls(
            config.host, config.port, auth=config.auth, db=config.db, tls=tls, tls_hostname=hostname
        )

    async def check(self, payload: Mapping[str, Any]) -> bool:
        command, limit = rate_limit_command(payload, self._wall_clock())
        try:
            with anyio.fail_after(self.timeout):
                async with self._lock:
                    reply = await self._roundtrip(command)
                return _allowed(reply, limit)
        except (TimeoutError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self.failures += 1
            await self.aclose()
            raise RedisUnavailable(f"redis at {self.host}:{self.port}: {exc!r}") from exc
        except RedisUnavailable:
            self.failures += 1
            await self.aclose()
            raise

    async def _roundtrip(self, command: bytes) -> Any:
        if self._stream is None:
            if self._tls is None:
                self._stream = await anyio.connect_tcp(self.host, self.port)
            else:
                self._stream = await anyio.connect_tcp(
                    self.host,
                    self.port,
                    ssl_context=self._tls,
                    tls_hostname=self._tls_hostname,
                    tls_standard_compatible=False,
                )
            for name, login in self._login:
                check_login(name, await self._exchange(login))
        return await self._exchange(command)

    async def _exchange(self, command: bytes) -> Any:
        assert self._stream is not None
        await self._stream.send(command)
        reader = RespReader()
        while (reply := reader.get()) is NEED:
            reader.feed(await self._stream.receive())
        return reply

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()


class BlockingRedisRateLimiter:
    """Synchronous calls with a socket timeout: each blocks its caller for up to ``timeout``
    (the blocking adapter calls it from a helper thread, never from its loop)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 0.25,
        wall_clock: Callable[[], float] = time.time,
        auth: Credentials | None = None,
        db: int = 0,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._wall_clock = wall_clock
        self._login = login_commands(auth, db)
        self._tls, self._tls_hostname = tls, tls_hostname
        self._sock: socket.socket | None = None
        self.failures = 0

    @classmethod
    def from_config(cls, config: RateLimitRedisConfig) -> BlockingRedisRateLimiter:
        tls, hostname = tls_of(config)
        return cls(
            config.host, config.port, auth=config.auth, db=config.db, tls=tls, tls_hostname=hostname
        )

    def check(self, payload: Mapping[str, Any]) -> bool:
        command, limit = rate_limit_command(payload, self._wall_clock())
        try:
            if self._sock is None:
                sock = socket.create_connection((self.host, self.port), self.timeout)
                if self._tls is not None:
                    try:
                        sock = self._tls.wrap_socket(sock, server_hostname=self._tls_hostname)
                    except BaseException:
                        sock.close()
                        raise
                self._sock = sock
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for name, login in self._login:
                    check_login(name, self._exchange(self._sock, login))
            return _allowed(self._exchange(self._sock, command), limit)
        except (OSError, RedisUnavailable) as exc:
            self.failures += 1
            self.close()
            raise RedisUnavailable(f"redis at {self.host}:{self.port}: {exc}") from exc

    @staticmethod
    def _exchange(sock: socket.socket, command: bytes) -> Any:
        sock.sendall(command)
        reader = RespReader()
        while (reply := reader.get()) is NEED:
            chunk = sock.recv(65536)
            if not chunk:
                raise RedisUnavailable("connection closed by redis")
            reader.feed(chunk)
        return reply

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
