"""Run a proxy in a background thread for tests: ``start_proxy(config, adapter=...)``.

    with start_proxy(config, adapter="trio") as running:
        sock = socket.create_connection(("127.0.0.1", running.ports["redis"]))
        stats = running.call(lambda: running.proxy.stats.snapshot())

Adapters: ``asyncio``, ``uvloop``, ``trio``, ``anyio`` (anyio on asyncio) and ``blocking``.
``running.call(fn)`` runs ``fn`` in the proxy's thread (the core is not thread-safe: read it
there). Leaving the block closes the proxy and re-raises, as ``ProxyCrashed``, any exception
the core or the adapter raised while serving.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from metaprotocol.adapters.dispatcher import Core, Dispatcher
from metaprotocol.adapters.serving import Serving, resolve_config
from metaprotocol.core.config import Config

__all__ = ["ADAPTERS", "ProxyCrashed", "RunningProxy", "start_proxy"]

ADAPTERS = ("asyncio", "uvloop", "trio", "anyio", "blocking")
T = TypeVar("T")


class ProxyCrashed(AssertionError):
    """The core or an adapter raised while serving (see the chained exception)."""


@dataclass
class RunningProxy:
    adapter: str
    addresses: dict[str, tuple[str, int]]
    admin_address: tuple[str, int] | None
    proxy: Core
    dispatcher: Dispatcher
    serving: Serving
    _call: Callable[[Callable[[], Any]], Any]
    _drain: Callable[[float], None]
    _reload: Callable[[Config], dict[str, tuple[str, int]]]

    @property
    def ports(self) -> dict[str, int]:
        return {name: port for name, (_, port) in self.addresses.items()}

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the proxy's thread and return its result."""
        result: T = self._call(fn)
        return result

    def drain(self, timeout: float) -> None:
        """Drain and stop the proxy (as SIGTERM would); returns once it has closed."""
        self._drain(timeout)

    def reload(self, config: Config) -> None:
        """Reload (as SIGHUP would) and refresh ``addresses``; raises, changing nothing,
        when a listener ``config`` adds cannot be bound."""
        self.addresses = self._reload(config)


@contextmanager
def start_proxy(
    config: Config | str | os.PathLike[str],
    adapter: str = "asyncio",
    *,
    proxy: Core | None = None,
    timeout: float = 10.0,
) -> Iterator[RunningProxy]:
    """Serve ``config`` with ``adapter`` in a background thread while the block runs."""
    cfg = resolve_config(config)
    if adapter == "blocking":
        cm = _blocking(cfg, proxy, timeout)
    elif adapter in ("asyncio", "uvloop", "trio", "anyio"):
        cm = _portal(cfg, adapter, proxy)
    else:
        raise ValueError(f"unknown adapter {adapter!r}; expected one of {', '.join(ADAPTERS)}")
    with cm as running:
        yield running
        crashes = running.call(lambda: list(running.dispatcher.crashes))
    if crashes:
        raise ProxyCrashed(f"{len(crashes)} exception(s) while serving: {crashes!r}") from crashes[
            0
        ]


@contextmanager
def _portal(cfg: Config, adapter: str, proxy: Core | None) -> Iterator[RunningProxy]:
    backend = "trio" if adapter == "trio" else "asyncio"
    options = {"use_uvloop": True} if adapter == "uvloop" else {}
    with ExitStack() as stack:
        portal: BlockingPortal = stack.enter_context(
            start_blocking_portal(backend, backend_options=options)
        )
        if adapter in ("asyncio", "uvloop"):
            from metaprotocol.adapters import asyncio as aio

            handle: Any = portal.call(lambda: aio.serve(cfg, proxy=proxy))
            stack.callback(portal.call, handle.close)
        else:
            from metaprotocol.adapters import anyio as aio_any

            handle = stack.enter_context(
                portal.wrap_async_context_manager(aio_any.serve(cfg, proxy=proxy))
            )

        def reload(config: Config) -> dict[str, tuple[str, int]]:
            def apply() -> dict[str, tuple[str, int]]:
                handle.reload(config)
                return dict(handle.addresses)

            return portal.call(apply)

        yield RunningProxy(
            adapter,
            dict(handle.addresses),
            handle.admin_address,
            handle.proxy,
            handle.dispatcher,
            handle.serving,
            portal.call,
            lambda timeout: portal.call(handle.drain, timeout),
            reload,
        )


@contextmanager
def _blocking(cfg: Config, proxy: Core | None, timeout: float) -> Iterator[RunningProxy]:
    from metaprotocol.adapters.blocking import Handle, serve_forever

    started: concurrent.futures.Future[Handle] = concurrent.futures.Future()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            serve_forever(cfg, started.set_result, proxy=proxy)
        except BaseException as exc:
            failure.append(exc)
            if not started.done():
                started.set_exception(exc)

    thread = threading.Thread(target=target, name="metaprotocol-blocking", daemon=True)
    thread.start()
    handle = started.result(timeout)

    def call(fn: Callable[[], T]) -> T:
        if not thread.is_alive():  # stopped: nothing else touches the core any more
            return fn()
        return handle.call(fn).result(timeout)

    def drain(drain_timeout: float) -> None:
        handle.stop(drain_timeout)
        thread.join(drain_timeout + timeout)

    def reload(config: Config) -> dict[str, tuple[str, int]]:
        handle.reload(config)  # binds here; the loop applies it next, before this call
        return call(lambda: dict(handle.addresses))

    try:
        yield RunningProxy(
            "blocking", dict(handle.addresses), handle.admin_address, handle.proxy,
            handle.dispatcher, handle.serving, call, drain, reload,
        )  # fmt: skip
    finally:
        handle.stop()
        thread.join(timeout)
    if failure:
        raise ProxyCrashed("the blocking adapter's thread raised") from failure[0]
