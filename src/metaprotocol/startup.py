"""Startup checks of ``metaprotocol run``, each problem one line naming what and where.

Before any adapter starts, the runner checks that the adapter's optional dependency is
installed (``missing_dependency``), that ``tracing`` has the OpenTelemetry SDK it needs
(``tracing_problems``), and that every listener and the admin address can be
bound (``bind_problems``: each is bound and closed again, with the options the adapter will
use). A failure the checks could not foresee is still turned into lines, not a traceback,
by ``describe`` (an ExceptionGroup from trio becomes one line per exception inside it).
"""

from __future__ import annotations

import importlib
import re
import socket

from metaprotocol.adapters.dispatch import bind_socket
from metaprotocol.core.config import Config

_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\] ")

__all__ = [
    "ADAPTER_EXTRAS",
    "bind_problems",
    "describe",
    "missing_dependency",
    "reason",
    "tracing_problems",
]

# adapter -> (module it needs, the extra that installs it)
ADAPTER_EXTRAS: dict[str, tuple[str, str]] = {
    "uvloop": ("uvloop", "uvloop"),
    "trio": ("trio", "trio"),
}


def missing_dependency(adapter: str) -> str | None:
    """Why ``adapter`` cannot run here (its package is not installed), or None."""
    needed = ADAPTER_EXTRAS.get(adapter)
    if needed is None:
        return None
    module, extra = needed
    try:
        importlib.import_module(module)
    except ImportError:
        return (
            f"--adapter {adapter} needs the {module} package, which is not installed: "
            f"pip install 'metaprotocol[{extra}]'"
        )
    return None


def tracing_problems(config: Config) -> list[str]:
    """One line if the config's ``tracing`` needs the OpenTelemetry SDK and it is missing."""
    if config.tracing is None:
        return []
    from metaprotocol.tracing import otel_hint

    try:
        importlib.import_module("opentelemetry.sdk.trace")
        importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError as exc:
        return [otel_hint(exc)]
    return []


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reason(exc: BaseException) -> str:
    """A short lower-case reason, e.g. ``address already in use``."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def bind_problems(config: Config, *, reuse_port: bool, admin: bool = True) -> list[str]:
    """One line per listener (and the admin address) that cannot be bound right now."""
    targets = [(f"listener {lst.name!r}", lst.host, lst.port) for lst in config.listeners]
    if admin and config.admin is not None:
        targets.append(("admin", config.admin.host, config.admin.port))
    problems: list[str] = []
    for what, host, port in targets:
        try:
            sock = bind_socket(host, port, reuse_port and what != "admin")
        except (OSError, socket.gaierror) as exc:
            problems.append(f"{what} cannot listen on {_address(host, port)}: {reason(exc)}")
        else:
            sock.close()
    return problems


def describe(exc: BaseException) -> list[str]:
    """One line per failure inside ``exc`` (ExceptionGroups flattened)."""
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in describe(inner)]
    if isinstance(exc, OSError):
        text = _ERRNO_PREFIX.sub("", str(exc)) or reason(exc)
        return [text[:1].lower() + text[1:]]
    return [f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__]
