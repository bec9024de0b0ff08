"""Finding real peer binaries: skip with a reason locally, fail in CI (CI=true)."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

__all__ = ["IN_CI", "require_binary", "require_module"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH (or /usr/sbin); skip the test if absent, fail in CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path:
        return path
    message = f"peer binary {name!r} is not installed (.ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_module(name: str) -> ModuleType:
    """Import ``name`` (a test dependency from the dev extra); skip the test if it is not
    installed, fail in CI, where `make` installs every extra the suite needs."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        message = f"module {name!r} is not installed ({exc}; `make venv` installs it)"
        if IN_CI:
            raise RuntimeError(message) from exc
        pytest.skip(message, allow_module_level=True)
