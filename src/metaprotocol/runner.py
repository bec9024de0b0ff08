"""``metaprotocol run``: serve a config file with one adapter, in one or N worker processes.

SIGHUP reloads the file: routes, clusters and filters are swapped atomically; listeners the
file adds or moves are bound, and those it removes stop accepting while their connections
drain; an invalid file, or a listener that cannot be bound, is logged and the running
config keeps serving; the admin address, the access log path and tracing are fixed at
start. SIGUSR1 (and SIGHUP too) reopens the access log file, for rotation: ``mv`` it away,
then signal. SIGTERM or SIGINT drains: stop
accepting, let in-flight requests finish for up to ``drain_timeout`` seconds, close, exit
0. With ``workers > 1`` a supervisor process forks N workers that each bind the listeners
with SO_REUSEPORT (the kernel spreads connections) and serves one admin endpoint whose
stats are the sum over the workers (see supervisor.py); it forwards signals to them and
exits when they all have.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from metaprotocol.core.config import AdminConfig, Config
from metaprotocol.logs import problem
from metaprotocol.startup import bind_problems, describe, missing_dependency, tracing_problems
from metaprotocol.supervisor import WorkerLink, run_workers

__all__ = ["ADAPTER_NAMES", "DEFAULT_DRAIN_TIMEOUT", "XDS_EXTRA_HINT", "run", "xds_problems"]

log = logging.getLogger("metaprotocol")

ADAPTER_NAMES = ("asyncio", "uvloop", "trio", "blocking")
DEFAULT_DRAIN_TIMEOUT = 10.0


def _load(path: str) -> Config:
    from metaprotocol.configfile import load_config

    return load_config(path)


def _reload(path: str, handle: Any, current: Config, xds: Any = None) -> Config:
    """Load ``path`` and hand it to ``handle.reload``; on any error (a bad file, a listener
    that cannot be bound) keep ``current`` and log why. With an xDS client the resources it
    accepted are laid over the file's config."""
    try:
        config = _load(path)
        if xds is not None:
            config = xds.rebase(config)
    except Exception as exc:
        log.warning("reload of %s rejected, keeping the running config: %s", path, exc)
        return current
    try:
        handle.reload(config)
    except Exception as exc:
        log.warning("reload of %s failed, keeping the running config: %s", path, exc)
        return current
    before = {lst.name: (lst.host, lst.port) for lst in current.listeners}
    after = {lst.name: (lst.host, lst.port) for lst in config.listeners}
    for name in before.keys() - after.keys():
        log.info("listener %s closed (its connections drain)", name)
    for name, address in after.items():
        if before.get(name) != address and name in handle.addresses:
            log.info("listener %s on %s:%d", name, *handle.addresses[name])
    log.info("reloaded %s", path)
    return config


XDS_EXTRA_HINT = (
    "xds needs the grpcio and xds-protos packages, which are not installed: "
    "pip install 'metaprotocol[xds]'"
)


def xds_problems(config: Config) -> list[str]:
    """One line if the config has an ``xds`` block and the ``[xds]`` extra is missing."""
    if config.raw.get("xds") is None:
        return []
    try:
        importlib.import_module("grpc")
        importlib.import_module("envoy.service.discovery.v3.ads_pb2_grpc")
    except ImportError:
        return [XDS_EXTRA_HINT]
    return []


Call = Callable[[Callable[[], Any]], Any]
_CALL_TIMEOUT = 30.0  # how long the xDS thread waits for the loop to run what it posted


def _start_xds(config: Config, handle: Any, call: Call, reload: Any = None) -> Any:
    """Start the xDS client when ``config`` has an ``xds`` block (None otherwise): it
    applies each accepted update with ``handle.reload`` on the loop, through ``call``."""
    from metaprotocol.configfile.xds import xds_settings

    settings = xds_settings(config)
    if settings is None:
        return None
    from metaprotocol.xds.client import XdsClient

    def apply(new: Config) -> None:
        call(lambda: handle.reload(new))

    client = XdsClient(settings, config, reload or apply, call, handle.proxy.stats)
    client.start()
    log.info("xDS control plane %s:%d", settings.host, settings.port)
    return client


def _asyncio_call(loop: asyncio.AbstractEventLoop) -> Call:
    def call(fn: Callable[[], Any]) -> Any:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except Exception as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(_CALL_TIMEOUT)

    return call


def _announce(handle: Any) -> None:
    for name, (host, port) in list(handle.addresses.items()):
        log.info("listener %s on %s:%d", name, host, port)
    if handle.admin_address is not None:
        log.info("admin on %s:%d", *handle.admin_address)


Announce = Callable[[Any], None]


def _worker_announce(link: WorkerLink) -> Announce:
    """A worker logs its listeners and reports its internal admin port to the supervisor."""

    def announce(handle: Any) -> None:
        for name, (host, port) in list(handle.addresses.items()):
            log.info("worker %d: listener %s on %s:%d", link.index, name, host, port)
        admin = handle.admin_address
        link.report(None if admin is None else admin[1])

    return announce


async def _serve_asyncio(
    path: str, config: Config, reuse_port: bool, admin: bool, drain: float, announce: Announce
) -> None:
    from metaprotocol.adapters import asyncio as adapter

    loop = asyncio.get_running_loop()
    handle = await adapter.serve(config, reuse_port=reuse_port, admin=admin)
    stop = asyncio.Event()
    current = [config]
    xds = _start_xds(config, handle, _asyncio_call(loop))

    def on_hup() -> None:
        handle.serving.reopen_access_log()
        current[0] = _reload(path, handle, current[0], xds)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR1, handle.serving.reopen_access_log)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(handle)  # last: whoever waits for it may signal at once
    try:
        await stop.wait()
        log.info("draining (up to %.1fs)", drain)
        await handle.drain(drain)
    finally:
        if xds is not None:
            await asyncio.to_thread(xds.stop)
        await handle.close()
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve_anyio(
    path: str, config: Config, reuse_port: bool, admin: bool, drain: float, announce: Announce
) -> None:
    import anyio
    import anyio.from_thread
    import anyio.lowlevel
    import anyio.to_thread

    from metaprotocol.adapters import anyio as adapter

    current = config
    watched = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    with anyio.open_signal_receiver(*watched) as signals:
        async with adapter.serve(config, reuse_port=reuse_port, admin=admin) as handle:
            token = anyio.lowlevel.current_token()

            def call(fn: Callable[[], Any]) -> Any:
                return anyio.from_thread.run_sync(fn, token=token)

            xds = _start_xds(config, handle, call)
            announce(handle)
            try:
                async for sig in signals:
                    if sig == signal.SIGUSR1:
                        handle.serving.reopen_access_log()
                    elif sig == signal.SIGHUP:
                        handle.serving.reopen_access_log()
                        current = _reload(path, handle, current, xds)
                    else:
                        break
                log.info("draining (up to %.1fs)", drain)
                await handle.drain(drain)
            finally:
                if xds is not None:
                    await anyio.to_thread.run_sync(xds.stop)


def _serve_blocking(
    path: str, config: Config, reuse_port: bool, admin: bool, drain: float, announce: Announce
) -> None:
    from metaprotocol.adapters.blocking import Handle, serve_forever

    current = [config]
    xds: list[Any] = [None]

    def ready(handle: Handle) -> None:
        def call(fn: Callable[[], Any]) -> Any:
            return handle.call(fn).result(_CALL_TIMEOUT)

        # The blocking handle's reload is thread-safe: it binds here and swaps on the loop.
        xds[0] = _start_xds(config, handle, call, handle.reload)

        def reload() -> None:
            handle.serving.reopen_access_log()
            current[0] = _reload(path, handle, current[0], xds[0])

        def on_hup(signum: int, frame: object) -> None:
            # A Python signal handler runs between any two bytecodes of the main thread,
            # which is the loop's: the reload waits for the loop's next turn instead of
            # changing what the interrupted code (the announcement, say) is iterating.
            handle.call(reload)

        def on_usr1(signum: int, frame: object) -> None:
            handle.call(handle.serving.reopen_access_log)

        def on_term(signum: int, frame: object) -> None:
            log.info("draining (up to %.1fs)", drain)
            handle.stop(drain_timeout=drain)

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, on_usr1)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        announce(handle)  # last: whoever waits for it may signal at once

    try:
        serve_forever(config, ready, reuse_port=reuse_port, admin=admin)
    finally:
        if xds[0] is not None:
            xds[0].stop()


def _serve(
    path: str,
    adapter: str,
    *,
    reuse_port: bool,
    admin: bool,
    drain: float,
    worker: WorkerLink | None = None,
) -> int:
    # Until the adapter's handlers are in place a SIGHUP or SIGUSR1 must not end the process:
    # the file is being read (and the access log opened) now anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    config = _load(path)
    announce: Announce = _announce
    if worker is not None:  # the supervisor serves the admin address; this worker reports
        announce = _worker_announce(worker)
        if config.admin is not None:
            config = replace(config, admin=AdminConfig("127.0.0.1", 0))
    if adapter == "asyncio":
        asyncio.run(_serve_asyncio(path, config, reuse_port, admin, drain, announce))
    elif adapter == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_asyncio(path, config, reuse_port, admin, drain, announce))
    elif adapter == "trio":
        import anyio

        anyio.run(_serve_anyio, path, config, reuse_port, admin, drain, announce, backend="trio")
    elif adapter == "blocking":
        _serve_blocking(path, config, reuse_port, admin, drain, announce)
    else:
        raise ValueError(f"unknown adapter {adapter!r}; expected one of {', '.join(ADAPTER_NAMES)}")
    log.info("stopped")
    return 0


def _run_workers(path: str, adapter: str, workers: int, drain: float) -> int:
    def serve(index: int, link: WorkerLink) -> int:
        return _serve(path, adapter, reuse_port=True, admin=True, drain=drain, worker=link)

    return run_workers(_load(path), workers, serve)


def run(
    config_path: str,
    adapter: str = "asyncio",
    workers: int = 1,
    *,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> int:
    """Serve ``config_path`` until SIGTERM/SIGINT; the process exit code.

    What keeps the proxy from starting (the adapter's package missing, a listener or the
    admin address that cannot be bound, any other failure) is reported one line per problem
    (``metaprotocol.logs.problem``) with exit code 1; the traceback only at debug level."""
    if adapter not in ADAPTER_NAMES:
        log.error("unknown adapter %r; expected one of %s", adapter, ", ".join(ADAPTER_NAMES))
        return 2
    missing = missing_dependency(adapter)
    if missing is not None:
        problem(missing)
        return 1
    try:
        config = _load(config_path)
        problems = [
            *tracing_problems(config),
            *xds_problems(config),
            *bind_problems(config, reuse_port=workers > 1),
        ]
        for line in problems:
            problem(line)
        if problems:
            return 1
        if workers > 1:
            return _run_workers(config_path, adapter, workers, drain_timeout)
        return _serve(config_path, adapter, reuse_port=False, admin=True, drain=drain_timeout)
    except Exception as exc:
        for line in describe(exc):
            problem(line)
        log.debug("what failed, in full", exc_info=True)
        return 1
