"""Secret values from the config (passwords) and the credentials that carry them.

A ``Secret`` never shows its value: ``repr``, ``str`` and formatting give ``'******'``, so
a config object, an exception or a log line that includes one does not leak it. Code that
needs the value asks for it by name (``reveal()``). Comparing two secrets, or a secret
with what a client sent (``matches``), takes the same time wherever they differ
(``hmac.compare_digest``), so response timing does not tell a guesser how close it got.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_USERNAME", "Credentials", "Secret"]

DEFAULT_USERNAME: Final = "default"
"""The user a password-only login authenticates as (Redis' ``default`` user)."""

_HIDDEN: Final = "******"


class Secret:
    """A value that is never printed. ``reveal()`` gives it; ``matches`` compares it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: bytes) -> bool:
        """Whether ``candidate`` (bytes from the wire) is the secret, in constant time."""
        return hmac.compare_digest(self._value.encode("utf-8", "surrogateescape"), candidate)

    def __repr__(self) -> str:
        return f"Secret({_HIDDEN!r})"

    def __str__(self) -> str:
        return _HIDDEN

    def __format__(self, spec: str) -> str:
        return _HIDDEN

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username (None: the peer's default user) and its password."""

    password: Secret
    username: str | None = None

    @property
    def user(self) -> str:
        """The username to log in as (``default`` when none is configured)."""
        return self.username if self.username is not None else DEFAULT_USERNAME

    def matches(self, username: bytes, password: bytes) -> bool:
        """Whether a client's ``username`` and ``password`` are these, in constant time
        (both are compared whatever the first comparison gave)."""
        user_ok = hmac.compare_digest(self.user.encode("utf-8", "surrogateescape"), username)
        password_ok = self.password.matches(password)
        return user_ok & password_ok
