"""Secrets in the config: ``{username, password | password_file | password_env}`` and redaction.

Wherever the config takes a secret it takes exactly one of

- ``password``: the value itself (fine for tests; it is redacted from ``/config_dump``),
- ``password_file``: a file holding it (one trailing newline is dropped), read at load and
  on every reload, e.g. a Kubernetes or Docker secret under ``/run/secrets``,
- ``password_env``: the name of an environment variable holding it.

Errors name the path and the file or variable, never the value. ``redacted`` gives the
config data with every inline ``password`` replaced, for ``Config.raw``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from metaprotocol.configfile.values import Reader, describe, join_path
from metaprotocol.core.secrets import Credentials, Secret

__all__ = ["CREDENTIALS_KEYS", "REDACTED", "SECRET_KEYS", "read_credentials", "redacted"]

SECRET_KEYS: Final = ("password", "password_file", "password_env")
CREDENTIALS_KEYS: Final = ("username", *SECRET_KEYS)
REDACTED: Final = "<redacted>"


def read_credentials(reader: Reader, value: object, path: str) -> Credentials | None:
    """``{username, password | password_file | password_env}`` at ``path``; None (with the
    errors recorded) when it is not valid."""
    m = reader.mapping(value, path, CREDENTIALS_KEYS)
    if m is None:
        return None
    username = reader.optional(m, "username", path, reader.string)
    password = read_secret(reader, m, path)
    return None if password is None else Credentials(password, username)


def read_secret(reader: Reader, m: Mapping[str, Any], path: str) -> Secret | None:
    """Exactly one of ``password``, ``password_file``, ``password_env`` in ``m``."""
    given = [key for key in SECRET_KEYS if m.get(key) is not None]
    if not given:
        reader.error(path, f"one of {', '.join(SECRET_KEYS)} is required")
        return None
    if len(given) > 1:
        reader.error(path, f"give only one of {', '.join(SECRET_KEYS)}, got {' and '.join(given)}")
        return None
    key = given[0]
    where = join_path(path, key)
    value = m[key]
    if not isinstance(value, str) or not value:
        # Never echo the value: it may be the secret itself.
        shown = "an empty string" if value == "" else describe_kind(value)
        reader.error(where, f"expected a non-empty string, got {shown}")
        return None
    if key == "password":
        return Secret(value)
    if key == "password_file":
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            reader.error(where, f"cannot read {value!r}: {exc.strerror or type(exc).__name__}")
            return None
        except UnicodeDecodeError:
            reader.error(where, f"cannot read {value!r}: not UTF-8 text")
            return None
        secret = text[:-1] if text.endswith("\n") else text
        secret = secret[:-1] if secret.endswith("\r") else secret
        if not secret:
            reader.error(where, f"{value!r} is empty")
            return None
        return Secret(secret)
    found = os.environ.get(value)
    if found is None:
        reader.error(where, f"environment variable {value!r} is not set")
        return None
    if not found:
        reader.error(where, f"environment variable {value!r} is empty")
        return None
    return Secret(found)


def describe_kind(value: object) -> str:
    """What kind of value it is, without showing it (a number may be the password)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number (quote it to make it a string)"
    return describe(value)


def redacted(data: Any) -> Any:
    """A copy of config data with the value of every ``password`` key replaced."""
    if isinstance(data, Mapping):
        return {
            key: REDACTED if key == "password" and value is not None else redacted(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redacted(item) for item in data]
    return data
