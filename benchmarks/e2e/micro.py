"""The ``micro`` group: codec throughput and the core round trip, on each build, in the run.

It runs ``benchmarks/codecs.py`` and ``benchmarks/core.py`` (no sockets, no peers) with the
interpreter of each build, the interpreted one (this process's) and the ``--compiled`` one,
and reads the figures back from the ``--json`` file each writes. A script that fails is a
note, and its figures are then missing (the goals say "not measured").
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MicroSettings", "markdown", "measure"]

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class MicroSettings:
    codec_seconds: float  # CPU time per codec measurement (codecs.py --seconds)
    core_requests: int  # round trips per core measurement (core.py --requests)


def _run(argv: list[str], out: Path, timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"exited {done.returncode}: {done.stderr.strip()[-300:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def measure(
    builds: dict[str, str], settings: MicroSettings, notes: list[str]
) -> dict[str, dict[str, Any]]:
    """``builds``: build name (``interpreted``, ``mypyc``) -> its Python. Per build:
    ``codecs`` (codecs.py's records) and ``core`` (core.py's figures), when they ran."""
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="metaprotocol-micro-") as tmp:
        for build, python in builds.items():
            figures: dict[str, Any] = {}
            codecs = Path(tmp) / f"codecs-{build}.json"
            core = Path(tmp) / f"core-{build}.json"
            jobs = (
                ("codecs", [python, "benchmarks/codecs.py", "--seconds"], codecs),
                ("core", [python, "benchmarks/core.py", "--requests"], core),
            )
            for name, argv, path in jobs:
                size = settings.codec_seconds if name == "codecs" else settings.core_requests
                try:
                    data = _run([*argv, str(size), "--json", str(path)], path, timeout=600)
                except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                    notes.append(f"{name} ({build} build): {str(exc).splitlines()[0][:200]}")
                    continue
                if name == "codecs":
                    figures["codecs"] = data["codecs"]
                    notes += [f"codecs ({build} build): {n.lstrip('- ')}" for n in data["notes"]]
                else:
                    figures["core"] = data
            out[build] = figures
    return out


def markdown(micro: dict[str, dict[str, Any]]) -> list[str]:
    """Codec throughput and the core round trip, the builds side by side."""
    if not micro:
        return []
    builds = list(micro)
    out = [
        "## Codecs and core (no sockets)",
        "",
        "`benchmarks/codecs.py` (msgs/s of the best batch of about 64 KiB, CPU time) and "
        "`benchmarks/core.py` (µs per round trip through the core, best of 3) on each build.",
        "",
        "| codec | operation | " + " | ".join(f"{b} msgs/s" for b in builds) + " |",
        "|---|---|" + "--:|" * len(builds),
    ]
    keys: dict[tuple[str, str], dict[str, float]] = {}
    for build in builds:
        for c in micro[build].get("codecs", []):
            keys.setdefault((c["label"], c["operation"]), {})[build] = c["best_msgs_per_s"]
    for (label, operation), values in keys.items():
        cells = " | ".join(f"{values[b]:,.0f}" if b in values else "-" for b in builds)
        op = "decode + metadata" if operation == "decode" else operation
        out.append(f"| {label} | {op} | {cells} |")
    out += ["", "| core | " + " | ".join(f"{b} µs" for b in builds) + " |"]
    out.append("|---|" + "--:|" * len(builds))
    for key, text in (
        ("round_trip_us", "round trip, observer events off"),
        ("round_trip_observed_us", "round trip, observer events on"),
        ("redis_pipelined_us", "Redis, 16 pipelined SETs per read, per command"),
    ):
        cells = " | ".join(
            f"{micro[b]['core'][key]:.2f}" if key in micro[b].get("core", {}) else "-"
            for b in builds
        )
        out.append(f"| {text} | {cells} |")
    return [*out, ""]
