"""anyio adapter: the core under trio or asyncio through anyio, a task per connection.

Embedding (inside ``trio.run`` or ``anyio.run``)::

    async with metaprotocol.adapters.anyio.serve(config) as handle:
        print(handle.ports)
        await handle.drain(timeout=10)

Each connection has a reader task (``receive()``, skipped while the core has reading
disabled: at most one ``READ_CHUNK`` already requested can still arrive) and a writer task
that sends whatever accumulated in the connection's out buffer (up to ``SEND_CHUNK`` at a
time). Under trio a plain TCP connection skips anyio's stream for its reads and writes
(adapters/trio_sockets.py): the reader waits for readability and reads the socket, a write
is sent at once as far as the kernel takes it, and only the rest waits for a writer task.
Watermarks, and the size reported by ``WriteBufferGrew`` above the high one, are
measured on that out buffer (bytes handed to the adapter and not yet accepted by the
kernel), not on the kernel's send buffer: honest, but coarser than asyncio's transport.
Core calls are synchronous, so the single core is safe without locks or channels.
TLS (metaprotocol.tls) is anyio's ``TLSStream`` over the socket stream: a TLS listener's
client is handshaken in a task of its own and reaches the core only once that succeeded;
an upstream reports ``UpstreamConnected`` after its handshake.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, assert_never

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketListener

from metaprotocol.adapters.anyio_connections import Streams, close_quietly
from metaprotocol.adapters.anyio_listening import listen as _listen
from metaprotocol.adapters.binding import bound_address
from metaprotocol.adapters.dispatcher import Core, Dispatcher
from metaprotocol.adapters.jobs import running_loop_post
from metaprotocol.adapters.serving import ServerInfo, Serving
from metaprotocol.core import outputs as out
from metaprotocol.core.config import Config
from metaprotocol.ratelimit_redis import AnyioRedisRateLimiter

__all__ = ["Handle", "serve"]


class Timer:
    """One dispatcher's timer: a task sleeping in a cancel scope whose deadline is the
    timer's (``run``). Arming moves that deadline and wakes no task: the core re-arms on
    most requests, and a task switch each time cost trio several µs per request."""

    def __init__(self, fire: Callable[[float], None]) -> None:
        self.fire = fire
        self.deadline: float | None = None
        self.scope = anyio.CancelScope()

    def arm(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.scope.deadline = math.inf if deadline is None else deadline

    async def run(self) -> None:
        while True:
            with self.scope:
                await anyio.sleep_forever()  # until the scope's deadline
            deadline = self.deadline
            if deadline is not None and anyio.current_time() >= deadline:
                self.deadline, self.scope = None, anyio.CancelScope()  # fire re-arms
                self.fire(deadline)
            else:  # re-armed later after the scope expired
                self.scope = anyio.CancelScope(deadline=math.inf if deadline is None else deadline)


class _Server:
    """The streams and tasks of one proxy; ``serving`` is everything else."""

    def __init__(self, tg: Any, config: Any, proxy: Core | None, **options: Any) -> None:
        self.limiter: AnyioRedisRateLimiter | None = None
        self.timers: list[Timer] = []
        self.serving = serving = Serving.start(
            config, proxy, clock=anyio.current_time, execute=self.execute,
            timer=self.timer, post=running_loop_post(), **options,
        )  # fmt: skip
        self.dispatcher = serving.dispatcher
        self.io = Streams(tg, serving, on_trio=_on_trio())  # the connections
        if (redis := serving.config.global_ratelimit_redis) is not None:
            self.limiter = limiter = AnyioRedisRateLimiter.from_config(redis)
            run = serving.calls.run
            serving.calls.register(
                "global_ratelimit", lambda call, arg: tg.start_soon(run, call, limiter.check, arg)
            )

    def timer(self, fire: Callable[[float], None]) -> Timer:
        self.timers.append(timer := Timer(fire))
        return timer

    def execute(self, instruction: out.Instruction) -> None:
        match instruction:
            case out.Write(conn, data):
                self.io.write(conn, data)
            case out.ReadDisable(conn) | out.ReadEnable(conn):
                self.io.set_readable(conn, type(instruction) is out.ReadEnable)
            case out.OpenUpstream(conn, host, port, tls):
                self.io.open(conn, host, port, tls)
            case out.CloseConnection(conn, flush):
                self.io.close(conn, flush)
            case out.ExternalCall() | out.RefreshSlotMap():
                self.serving.execute(instruction)
            case _:
                assert_never(instruction)


class Handle(ServerInfo):
    """A running proxy inside the caller's trio or asyncio program."""

    def __init__(self, server: _Server, tg: anyio.abc.TaskGroup) -> None:
        super().__init__()
        self._server = server
        self.serving = server.serving
        self._tg = tg  # where accepting tasks run
        self._accepting: dict[str, anyio.CancelScope] = {}  # per listener name
        self._background: list[anyio.CancelScope] = []  # accepting, admin, the timers
        self._listeners: dict[str, anyio.abc.Listener[anyio.abc.SocketStream]] = {}
        self._admin_listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    @property
    def proxy(self) -> Core:
        return self.serving.core

    @property
    def dispatcher(self) -> Dispatcher:
        return self.serving.dispatcher

    def _start(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` in a cancel scope of its own, stopped by ``close``."""
        self._background.append(scope := anyio.CancelScope())
        self._tg.start_soon(_in_scope, partial(fn, *args), scope)

    def _accept(self, name: str, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Accept on ``listener`` in a task of its own (``name`` "": the admin listener)."""
        self._background.append(scope := anyio.CancelScope())
        io = self._server.io
        if name:
            self._listeners[name], self._accepting[name] = listener, scope
            handler = partial(io.accepted, listener=name)
        else:
            self._admin_listener = listener
            handler = partial(io.serve_client, listener="admin", dispatcher=self.serving.admin)
        self._tg.start_soon(_listen, listener, handler, scope)

    def reload(self, config: Config) -> None:
        """Swap routes and clusters atomically, bind the listeners ``config`` adds or moves
        and stop accepting on those it removes (their connections drain). Binding happens
        first: if a listener cannot be bound this raises and nothing changes."""
        changes = self.serving.reload(config)
        changes.update(self.addresses)
        for name in changes.removed:
            scope = self._accepting.pop(name, None)
            if scope is not None:
                scope.cancel()  # its accept loop closes the listener on the way out
            self._listeners.pop(name, None)
        for name, sock in changes.added.items():
            self._accepting[name] = scope = anyio.CancelScope()
            self._background.append(scope)
            self._tg.start_soon(self._accept_on, name, sock, scope)

    async def _accept_on(self, name: str, sock: socket.socket, scope: anyio.CancelScope) -> None:
        try:
            listener = await SocketListener.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        if scope.cancel_called:
            await close_quietly(listener)
            return
        self._listeners[name] = listener
        await _listen(listener, partial(self._server.io.accepted, listener=name), scope)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``timeout``, then close."""
        await self._stop_accepting()
        done = anyio.Event()
        self.serving.start_drain(done.set)
        if not self.serving.drained:
            with anyio.move_on_after(timeout):
                await done.wait()
        await self.close()

    async def _stop_accepting(self) -> None:
        for scope in self._accepting.values():
            scope.cancel()
        for listener in list(self._listeners.values()):
            await close_quietly(listener)

    async def close(self) -> None:
        """Close listeners and every connection, and stop the proxy's tasks."""
        server, serving = self._server, self.serving
        if serving.closed:
            return
        serving.closed = serving.draining = True
        server.io.close_all()
        if server.limiter is not None:
            await server.limiter.aclose()
        serving.close()
        await self._stop_accepting()
        if self._admin_listener is not None:
            await close_quietly(self._admin_listener)
        for scope in self._background:
            scope.cancel()


async def _in_scope(fn: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
    with scope:
        await fn()


@asynccontextmanager
async def _connection_tasks(tg: anyio.abc.TaskGroup) -> AsyncIterator[Any]:
    """Where connection tasks are started: under trio a plain trio nursery inside ``tg``
    (an anyio task handle costs about 0.7 KiB per idle connection), else ``tg`` itself.
    Both offer ``start_soon(fn, *args)`` and ``cancel_scope``."""
    if not _on_trio():
        yield tg
        return
    async with sys.modules["trio"].open_nursery() as nursery:
        yield nursery


def _on_trio() -> bool:
    """Whether this runs under trio (anyio's trio backend)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:  # trio is imported, but this is not a trio run
        return False
    return True


@asynccontextmanager
async def serve(
    config: Config | str | os.PathLike[str],
    *,
    proxy: Core | None = None,
    reuse_port: bool = False,
    admin: bool = True,
) -> AsyncIterator[Handle]:
    """Serve ``config`` while the block runs; leaving the block closes everything."""
    async with anyio.create_task_group() as tg, _connection_tasks(tg) as conn_tasks:
        server = _Server(conn_tasks, config, proxy, reuse_port=reuse_port, admin=admin)
        handle, serving = Handle(server, tg), server.serving
        try:
            specs = [(spec.name, spec.host, spec.port) for spec in serving.config.listeners]
            if serving.admin is not None and (cfg := serving.config.admin) is not None:
                specs.append(("", cfg.host, cfg.port))  # "": the admin listener
            for name, host, port in specs:
                listener = await anyio.create_tcp_listener(
                    local_host=host, local_port=port, reuse_port=reuse_port and name != "",
                    backlog=1024,
                )  # fmt: skip
                address = bound_address(listener.extra(SocketAttribute.local_address))
                if name:
                    handle.addresses[name] = address
                else:
                    handle.admin_address = address
                handle._accept(name, listener)
            for timer in server.timers:
                handle._start(timer.run)
            serving.started()
            yield handle
        finally:
            await handle.close()
            conn_tasks.cancel_scope.cancel()  # whatever is left: writers, rate-limit calls
            tg.cancel_scope.cancel()
