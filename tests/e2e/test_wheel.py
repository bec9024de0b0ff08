"""The wheel stands alone: built once from a copy of the repository, installed into a fresh
virtual environment, it carries the LICENSE, serves Prometheus in a plain install, and runs
``metaprotocol demo`` outside the repository: the codecs it has peers for, and says how to
get the rest; with the ``demo`` extra the Thrift and Redis clients come along.

Slow (a build and two installs): ``pytest -m "not slow"`` leaves it out; CI runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaprotocol.demo.upstreams import find_redis_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600.0  # seconds: pip may fetch the dependencies
DEMO_TIMEOUT = 120.0
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.so"
)


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel, built once from a clean copy of the sources (the checkout stays as is)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    out = base / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        base,
        INSTALL_TIMEOUT,
    )
    (built,) = out.glob("metaprotocol-*.whl")
    yield built


def test_the_wheel_carries_the_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(license_file).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = archive.read(metadata).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert text == (ROOT / "LICENSE").read_text()
    assert "License-Expression: Apache-2.0" in meta
    assert "Provides-Extra: demo" in meta
    assert "Requires-Dist: prometheus_client" in meta.replace(
        "prometheus-client", "prometheus_client"
    )


def test_installed_wheel_runs_the_demo_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, INSTALL_TIMEOUT)
    python, script = venv / "bin" / "python", venv / "bin" / "metaprotocol"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # A plain install: the admin's Prometheus exposition works; the demo runs what it can.
    _run([*pip, str(wheel)], tmp_path, INSTALL_TIMEOUT)
    check = "from metaprotocol.metrics import render_prometheus; from metaprotocol.core.stats "
    check += "import Stats; print(render_prometheus(Stats().snapshot()).decode())"
    assert "process_cpu_seconds_total" in _run([str(python), "-c", check], elsewhere, 60).stdout
    plain = _run([str(script), "demo"], elsewhere, DEMO_TIMEOUT).stdout
    assert "thriftpy2 not installed: skipping Thrift (pip install 'metaprotocol[demo]')" in plain
    assert "skipped: thrift, redis (see why above;" in plain
    ran = int(re.findall(r"ok: every check passed \((\d+) codecs\)", plain)[0])

    # With the demo extra: every codec it has a peer for.
    _run([*pip, f"{wheel}[demo]"], tmp_path, INSTALL_TIMEOUT)
    full = _run([str(script), "demo"], elsewhere, DEMO_TIMEOUT).stdout
    more = 2 if find_redis_server() is not None else 1  # thrift, and redis with its server
    assert f"ok: every check passed ({ran + more} codecs)" in full, full
    if more == 1:
        assert "redis-server not installed" in full
    else:
        assert "skipped" not in full
