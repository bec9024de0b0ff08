"""Scalar config syntax (durations, sizes, addresses) and the error-collecting value reader.

The ``parse_*`` functions are public: adapters and tools accept the same forms as the
config file. ``Reader`` is the base of the config checker: every read method records a
path-qualified error and returns None on a bad value instead of raising, so one bad
value never hides the next.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "Reader",
    "describe",
    "hint",
    "join_path",
    "parse_address",
    "parse_duration",
    "parse_size",
]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE = re.compile(_NUMBER + r"\s*(ms|s|m|h)?")
_SIZE_RE = re.compile(_NUMBER + r"\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

T = TypeVar("T")


class ConfigError(Exception):
    """A config is invalid; ``errors`` holds every problem, one path-qualified line each."""

    def __init__(self, errors: Sequence[str], source: str = "<string>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``1.5s``, ``5m``, ``1h`` or a plain number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value < float("inf"):  # also rejects NaN
            raise ValueError(f"not a duration: {value!r}")
        return float(value)
    if isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise ValueError(f"not a duration: {value!r}")


def parse_size(value: object) -> int:
    """Bytes from an integer, ``64KiB``/``8MiB``/``1GiB`` (binary) or ``10KB``/``1MB`` (decimal)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"not a size: {value!r}")
        return value
    if isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or "B"])
    raise ValueError(f"not a size: {value!r}")


def parse_address(value: object, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` from ``host:port`` or ``[ipv6]:port``; port 0 only when allowed."""
    if not isinstance(value, str):
        raise ValueError(f"not an address: {value!r}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        ok = bool(sep) and "]" not in host
    else:
        host, sep, port = text.rpartition(":")
        ok = bool(sep) and ":" not in host
    if not ok or not host or any(c.isspace() for c in host) or not port.isdigit():
        raise ValueError(f"not an address: {value!r}")
    number = int(port)
    if not (0 if allow_port_zero else 1) <= number <= 65535:
        raise ValueError(f"port out of range: {value!r}")
    return host, number


def join_path(path: str, key: str) -> str:
    """``listeners[0]`` + ``codec`` -> ``listeners[0].codec``; odd keys are quoted."""
    if _PLAIN_KEY_RE.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def describe(value: object) -> str:
    """A value as the error message shows it (YAML words for null and booleans)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def hint(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Reader:
    """Reads values at paths, recording ``path: message`` errors; returns None when bad."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path or self.source}: {message}")

    # -- structure

    def mapping(
        self,
        value: object,
        path: str,
        allowed: Collection[str] | None,
        required: Collection[str] = (),
    ) -> Mapping[str, Any] | None:
        """A mapping with string keys; ``allowed`` None accepts any key."""
        if not isinstance(value, Mapping):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return None
        for key in value:
            if not isinstance(key, str):
                self.error(path, f"keys must be strings, got {describe(key)}")
            elif allowed is not None and key not in allowed:
                more = hint(key, allowed) or f" (expected one of: {', '.join(allowed)})"
                self.error(join_path(path, key), f"unknown key{more}")
        for key in required:
            if key not in value:
                self.error(join_path(path, key), "missing required key")
            elif value[key] is None:
                self.error(join_path(path, key), "required, got null")
        return value

    def sequence(self, value: object, path: str) -> list[Any] | None:
        if isinstance(value, (list, tuple)):
            return list(value)
        self.error(path, f"expected a list, got {describe(value)}")
        return None

    def field(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        read: Callable[[Any, str], T | None],
        default: T,
    ) -> T:
        """``m[key]`` read at ``path.key``; ``default`` when absent, null or bad."""
        value = self.optional(m, key, path, read)
        return default if value is None else value

    def optional(
        self, m: Mapping[str, Any], key: str, path: str, read: Callable[[Any, str], T | None]
    ) -> T | None:
        """``m[key]`` read at ``path.key``; None when absent, null or bad."""
        if m.get(key) is None:
            return None
        return read(m[key], join_path(path, key))

    # -- scalars

    def string(self, value: object, path: str) -> str | None:
        if isinstance(value, str) and value:
            return value
        self.error(path, f"expected a non-empty string, got {describe(value)}")
        return None

    def text(self, value: object, path: str) -> str | None:
        """A metadata value: a string, or an integer written without quotes."""
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        self.error(path, f"expected a string, got {describe(value)}")
        return None

    def boolean(self, value: object, path: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.error(path, f"expected true or false, got {describe(value)}")
        return None

    def integer(self, value: object, path: str, minimum: int) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(path, f"expected an integer, got {describe(value)}")
            return None
        if value < minimum:
            bound = "> 0" if minimum == 1 else f">= {minimum}"
            self.error(path, f"must be {bound}, got {value}")
            return None
        return value

    def count(self, value: object, path: str) -> int | None:
        """An integer >= 0."""
        return self.integer(value, path, 0)

    def positive(self, value: object, path: str) -> int | None:
        """An integer > 0."""
        return self.integer(value, path, 1)

    def bounded(self, value: object, path: str, high: float) -> float | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.error(path, f"expected a number, got {describe(value)}")
            return None
        if not 0.0 <= value <= high:
            self.error(path, f"must be between 0 and {high:g}, got {value!r}")
            return None
        return float(value)

    def fraction(self, value: object, path: str) -> float | None:
        return self.bounded(value, path, 1.0)

    def percentage(self, value: object, path: str) -> float | None:
        return self.bounded(value, path, 100.0)

    def duration(self, value: object, path: str, *, positive: bool = True) -> float | None:
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.error(path, f"expected a duration like 250ms, 1s, 5m, got {describe(value)}")
            return None
        if positive and seconds <= 0:
            self.error(path, f"must be > 0, got {describe(value)}")
            return None
        return seconds

    def positive_duration(self, value: object, path: str) -> float | None:
        return self.duration(value, path)

    def timeout_or_off(self, value: object, path: str) -> float | None:
        """A timeout where ``0`` disables it (the caller maps 0.0 to None)."""
        return self.duration(value, path, positive=False)

    def size(self, value: object, path: str) -> int | None:
        try:
            size = parse_size(value)
        except ValueError:
            self.error(path, f"expected a size like 65536, 64KiB, 8MiB, got {describe(value)}")
            return None
        if size <= 0:
            self.error(path, f"must be > 0, got {describe(value)}")
            return None
        return size

    def address(self, value: object, path: str, *, listen: bool = False) -> tuple[str, int] | None:
        """``host:port``; a listening address may use port 0 (any free port)."""
        try:
            return parse_address(value, allow_port_zero=listen)
        except ValueError:
            pass
        try:
            parse_address(value, allow_port_zero=True)
        except ValueError:
            self.error(path, f"expected host:port, got {describe(value)}")
        else:
            self.error(path, f"port must be in 1..65535, got {describe(value)}")
        return None

    def listen_address(self, value: object, path: str) -> tuple[str, int] | None:
        return self.address(value, path, listen=True)

    def choice(self, value: object, path: str, choices: Collection[str]) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        more = hint(value, choices) if isinstance(value, str) else ""
        self.error(path, f"expected one of {', '.join(choices)}, got {describe(value)}{more}")
        return None

    def strings(self, value: object, path: str) -> tuple[str, ...] | None:
        """A list of non-empty strings."""
        items = self.sequence(value, path)
        if items is None:
            return None
        read = (self.string(item, f"{path}[{i}]") for i, item in enumerate(items))
        return tuple(s for s in read if s is not None)
