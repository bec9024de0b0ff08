"""Finding real peer binaries: skip with a reason locally, fail in CI (CI=true)."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["IN_CI", "require_binary"]

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
