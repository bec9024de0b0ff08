"""The fuzz harnesses (fuzz/): every seed passes, the rules catch what they promise to,
and the runner fails on a finding with a reproducer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import run
from fuzz.common import Finding, drive
from metaprotocol.codecs.lengthprefixed import LengthPrefixedCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, NeedData, ProtocolError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(run.TARGETS))
def test_every_seed_passes_its_harness(name: str) -> None:
    harness, seeds = run._load(name)
    found = seeds()
    assert found, f"{name} has no seeds"
    for seed in found:
        harness(seed)


class Scripted(LengthPrefixedCodec):
    """The tutorial codec with a broken decode step put in front of it."""

    def __init__(self, step: str) -> None:
        super().__init__(Side.DOWNSTREAM, {}, 64)
        self.step = step

    def decode(self, buffer: bytearray) -> Message | NeedData:
        if self.step == "raise":
            raise KeyError("a bug")
        if self.step == "eat-and-wait":
            del buffer[:1]
            return NEED_DATA
        if self.step == "soft-error-in-place":
            raise ProtocolError("bad", fatal=False)
        if self.step == "hoard":
            return NEED_DATA
        return super().decode(buffer)


def test_a_valid_stream_passes() -> None:
    frames = b"\x00\x00\x00\x08\x01\x00\x00\x00\x00\x01\x00\x00" * 3
    assert len(drive(Scripted("ok"), frames, 5, 64)) == 3


def test_an_untyped_exception_escapes() -> None:
    with pytest.raises(KeyError):
        drive(Scripted("raise"), b"x", 0, 64)


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("eat-and-wait", "NEED_DATA consumed"),
        ("soft-error-in-place", "non-fatal ProtocolError consumed nothing"),
        ("hoard", "bytes buffered waiting"),
    ],
)
def test_a_broken_rule_is_a_finding(step: str, problem: str) -> None:
    with pytest.raises(Finding, match=problem):
        drive(Scripted(step), b"\x00" * 200, 7, 64)


def test_the_runner_fails_on_a_finding_and_prints_the_reproducer(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    target = "tests.fuzz.broken:harness:seeds"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuzz.run",
            "--seconds",
            "30",
            "--artifacts",
            str(tmp_path),
            "--log-dir",
            str(tmp_path / "logs"),
            target,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and "ValueError: found the needle" in proc.stdout
    reproducer = next(tmp_path.glob("tests.fuzz.broken-*"))
    assert reproducer.read_bytes()[3] == 0xFF
    assert f"--replay {target} hex:" in proc.stdout
    replay = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--replay", target, str(reproducer)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 1 and "found the needle" in replay.stdout + replay.stderr
    table = run._report(tmp_path / "logs")
    assert "| tests.fuzz.broken-harness-seeds |" in table and "| FINDING |" in table
