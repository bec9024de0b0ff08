"""What every adapter does alike (docs/architecture.md, "Adapters"): a core and its dispatcher
built from a config (``loading``), the observers, the external calls, the TLS contexts, the
admin core, reload, drain, jobs off the loop, DNS discovery; adapters keep only their IO."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from metaprotocol.accesslog import AccessLog
from metaprotocol.adapters.admin_core import AdminCore
from metaprotocol.adapters.binding import (
    ListenerChanges,
    bind_listener_changes,
    bind_socket,
    bound_address,
)
from metaprotocol.adapters.dispatcher import Core, Dispatcher, Driven
from metaprotocol.adapters.external import ExternalCalls
from metaprotocol.adapters.jobs import Periodic, Post
from metaprotocol.adapters.loading import build_core, global_ratelimit_redis, resolve_config
from metaprotocol.adapters.observers import Observers
from metaprotocol.adapters.slotmaps import SlotMapJobs
from metaprotocol.admin import AdminApp
from metaprotocol.core.config import Config
from metaprotocol.core.events import Event
from metaprotocol.core.outputs import ExternalCall, Instruction, RefreshSlotMap
from metaprotocol.core.stats import EndpointStatus
from metaprotocol.discovery.refresher import DnsRefresher
from metaprotocol.metrics import with_endpoints
from metaprotocol.tls import TlsContexts

__all__ = [
    "Reload",
    "ServerInfo",
    "Serving",
    "Timer",
    "build_core",
    "global_ratelimit_redis",
    "prepare_reload",
    "resolve_config",
]

log = logging.getLogger("metaprotocol")
T = TypeVar("T")


@dataclass
class ServerInfo:
    """Where a running proxy listens: listener name -> bound (host, port), and the admin."""

    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    admin_address: tuple[str, int] | None = None

    @property
    def ports(self) -> dict[str, int]:
        return {name: port for name, (_, port) in self.addresses.items()}


class Timer(Protocol):
    """An adapter's one timer for one dispatcher: ``arm(None)`` disarms it."""

    def arm(self, deadline: float | None) -> None: ...


@dataclass(frozen=True)
class Reload:
    """A reload bound and ready: the new config, its TLS contexts (the certificate files
    read again) and the listening sockets it adds."""

    config: Config
    tls: TlsContexts
    changes: ListenerChanges


def prepare_reload(old: Config | None, new: Config, reuse_port: bool) -> Reload:
    """Read ``new``'s certificates and bind the listeners it adds or moves over ``old``;
    raises, with nothing left bound, if one cannot be."""
    tls = TlsContexts(new)
    return Reload(new, tls, bind_listener_changes(old, new, reuse_port))


class Serving:
    """One running proxy, minus its IO.

    ``dispatcher`` runs ``core``; ``admin`` (when the config has an admin section and
    ``admin`` is true) runs the admin endpoint's ``AdminCore`` through the same ``execute``,
    so admin connections are served by the adapter's own connection code. ``timer`` makes
    the adapter's timer for a dispatcher, given what to call when it fires."""

    def __init__(
        self,
        config: Config,
        core: Core,
        *,
        clock: Callable[[], float],
        execute: Callable[[Instruction], None],
        timer: Callable[[Callable[[float], None]], Timer],
        write: Callable[[int, bytes], None] | None = None,
        post: Post | None = None,
        reuse_port: bool = False,
        admin: bool = True,
    ) -> None:
        self.config = config
        self.post = post  # the loop's thread-safe call-soon, for jobs off the loop
        self.jobs: list[Periodic[Any]] = []
        self.slot_maps = SlotMapJobs()  # Redis Cluster slot maps (adapters/slotmaps.py)
        self.core = core
        self.reuse_port = reuse_port
        self.tls = TlsContexts(config)
        access_log = (
            AccessLog(config.access_log, config.access_log_metadata) if config.access_log else None
        )
        self.observers = Observers(access_log, config.tracing)
        self.timers: list[Timer] = []
        self._clock, self._execute, self._timer = clock, execute, timer
        self.dispatcher = self._dispatcher(core, self.observers, write)
        self.calls = ExternalCalls(self.dispatcher.feed, core.stats)
        self.admin: Dispatcher | None = None
        if admin and config.admin is not None:
            self.admin = self._dispatcher(AdminCore(self.admin_app(), config.admin), None, None)
        self.draining = False  # draining or closed: no new listeners, /ready says 503
        self.closed = False
        self.on_drained: Callable[[], None] | None = None
        self.discovery = DnsRefresher.feeding(post, self.dispatcher.feed).started(config)

    @classmethod
    def start(
        cls,
        config: Config | str | os.PathLike[str],
        proxy: Core | None,
        *,
        clock: Callable[[], float],
        execute: Callable[[Instruction], None],
        timer: Callable[[Callable[[float], None]], Timer],
        write: Callable[[int, bytes], None] | None = None,
        post: Post | None = None,
        reuse_port: bool = False,
        admin: bool = True,
    ) -> Serving:
        """The serve preamble: the config (a path is loaded), the core (``proxy``, or one
        built from the config), the access log, the tracer, the TLS contexts."""
        cfg = resolve_config(config)
        core = proxy if proxy is not None else build_core(cfg, clock())
        return cls(
            cfg, core, clock=clock, execute=execute, timer=timer, write=write, post=post,
            reuse_port=reuse_port, admin=admin,
        )  # fmt: skip

    def _dispatcher(
        self, core: Driven, observers: Observers | None, write: Callable[[int, bytes], None] | None
    ) -> Dispatcher:
        timer = self._timer(lambda deadline: dispatcher.timer_fired(deadline))
        self.timers.append(timer)
        dispatcher = Dispatcher(
            core,
            clock=self._clock,
            execute=self._execute,
            arm_timer=timer.arm,
            observers=observers,
            write=write,
        )
        return dispatcher

    def bind(self, info: ServerInfo) -> tuple[dict[str, socket.socket], socket.socket | None]:
        """Bind every listener, and the admin listener when it is served, at start; their
        addresses go into ``info``. Raises, with nothing left bound, if one cannot be."""
        bound: dict[str, socket.socket] = {}
        admin: socket.socket | None = None
        try:
            for spec in self.config.listeners:
                bound[spec.name] = sock = bind_socket(spec.host, spec.port, self.reuse_port)
                info.addresses[spec.name] = bound_address(sock.getsockname())
            if self.admin is not None and self.config.admin is not None:
                admin = bind_socket(self.config.admin.host, self.config.admin.port, False)
                info.admin_address = bound_address(admin.getsockname())
        except BaseException:
            for sock in bound.values():
                sock.close()
            raise
        return bound, admin

    def started(self) -> None:
        """Arm the timers for anything the cores scheduled at start; start the jobs."""
        self.dispatcher.apply([])
        if self.admin is not None:
            self.admin.apply([])
        self.slot_maps.start(self.every if self.post is not None else None, self.config)

    def execute(self, instruction: ExternalCall | RefreshSlotMap) -> None:  # shared by all
        if isinstance(instruction, RefreshSlotMap):
            return self.slot_maps.refresh(instruction.cluster)
        self.calls.start(instruction)

    # -- reload ---------------------------------------------------------------------------

    def reload(self, config: Config) -> ListenerChanges:
        """Bind the listeners ``config`` adds or moves, then reload the core; the adapter
        then swaps its listening sockets. Raises, with nothing changed, if a certificate
        cannot be read, a listener cannot be bound or the core refuses ``config``."""
        if self.draining:
            raise RuntimeError("reload while draining or closed")
        prepared = prepare_reload(self.config, config, self.reuse_port)
        self.apply_reload(prepared)
        return prepared.changes

    def apply_reload(self, prepared: Reload) -> None:
        """Reload the core with a bound ``Reload`` (its sockets are closed if it refuses)."""
        config = prepared.config
        started = self.config.tracing
        if config.tracing != started:
            log.warning("tracing settings change only on restart; keeping those of the start")
            config = replace(config, tracing=started)
        try:
            outputs = self.core.reload(config, self.dispatcher.now())
        except BaseException:
            prepared.changes.close()
            raise
        self.config = config
        self.tls = prepared.tls
        self.dispatcher.apply(outputs)
        self.slot_maps.update(config)
        self.discovery.update(config)

    # -- drain and close ------------------------------------------------------------------

    def start_drain(self, on_drained: Callable[[], None] | None = None) -> None:
        """Ask the core to drain; ``on_drained`` is called once it has."""
        if self.draining:
            return
        self.draining = True
        self.on_drained = on_drained
        self.dispatcher.after_burst = self._check_drained
        self.dispatcher.apply(self.core.drain(self.dispatcher.now()))

    @property
    def drained(self) -> bool:
        return self.draining and self.core.drained

    def _check_drained(self) -> None:
        if self.core.drained:
            self.dispatcher.after_burst = None
            if self.on_drained is not None:
                self.on_drained()

    # -- jobs off the loop ----------------------------------------------------------------

    def every(
        self,
        interval: float,
        job: Callable[[], T],
        event: Callable[[T | None, str], Event | None],
        name: str = "metaprotocol-job",
    ) -> Periodic[T]:
        """Run the blocking ``job`` every ``interval`` seconds (the first time at once) on a
        thread of its own; on the loop's thread ``event(result, error)`` makes each outcome
        an event for the core (None: none). For discovery jobs; stopped by ``close``."""
        if self.post is None:
            raise RuntimeError("this adapter gave no way to post from a thread")

        def done(result: T | None, error: str) -> None:
            if not self.closed and (happened := event(result, error)) is not None:
                self.dispatcher.feed(happened)

        job_thread = Periodic(interval, job, done, self.post, name).start()
        self.jobs.append(job_thread)
        return job_thread

    def close(self) -> None:
        """Stop the jobs (one running now finishes, its outcome dropped); close the logs."""
        self.closed = True
        for job in self.jobs:
            job.close(timeout=0)
        self.discovery.stop(timeout=0.0)
        self.close_logs()

    def close_logs(self) -> None:
        """Write out and close the access log; export the spans still queued."""
        self.observers.close()

    def reopen_access_log(self) -> None:
        self.observers.reopen_access_log()

    # -- admin ----------------------------------------------------------------------------

    def admin_app(self) -> AdminApp:
        return AdminApp(
            ready=lambda: not self.draining,
            snapshot=lambda: with_endpoints(self.core.stats.snapshot(), self.endpoints()),
            config_raw=lambda: self.config.raw,
            endpoints=self.endpoints,
        )

    def endpoints(self) -> list[EndpointStatus]:
        return self.core.endpoint_statuses(self.dispatcher.now())
