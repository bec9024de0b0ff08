"""Run the fuzz targets with atheris, one process per target, and report what they found.

    python -m fuzz.run --seconds 10               # every target for 10 s (CI: make fuzz)
    python -m fuzz.run --runs 1000000 dubbo-request --corpus .fuzz/corpus
    python -m fuzz.run --replay dubbo-request crash-1a2b...   # re-run saved inputs
    python -m fuzz.run --list
    python -m fuzz.run --report .fuzz/logs         # a table of the runs kept by --log-dir
    python -m fuzz.run --seconds 60 mypackage.fuzzing:harness:seeds   # a harness of your own

A target that crashes (an exception other than the typed error it may raise, a broken
harness rule), exceeds ``--timeout`` seconds on one input or ``--rss-limit-mb`` of memory
fails the run; the input is saved and printed in hex with the command that replays it.
The last libFuzzer status line of each target (inputs executed, coverage ``cov``,
features ``ft``, corpus size) is printed in the summary.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

# Target name -> (module under fuzz/, harness function, seeds function).
# The module is imported only once atheris instruments imports (see _child).
TARGETS: dict[str, tuple[str, str, str]] = {
    "dubbo-request": ("codec_dubbo", "request", "request_seeds"),
    "dubbo-response": ("codec_dubbo", "response", "response_seeds"),
    "thrift-request": ("codec_thrift", "request", "request_seeds"),
    "thrift-response": ("codec_thrift", "response", "response_seeds"),
    "http1-request": ("codec_http1", "request", "request_seeds"),
    "http1-response": ("codec_http1", "response", "response_seeds"),
    "redis-request": ("codec_redis", "request", "request_seeds"),
    "redis-response": ("codec_redis", "response", "response_seeds"),
    "trpc-request": ("codec_trpc", "request", "request_seeds"),
    "trpc-response": ("codec_trpc", "response", "response_seeds"),
    "lengthprefixed-request": ("codec_lengthprefixed", "request", "request_seeds"),
    "lengthprefixed-response": ("codec_lengthprefixed", "response", "response_seeds"),
    "config-yaml": ("config_loader", "yaml_text", "yaml_seeds"),
    "config-json": ("config_loader", "json_text", "json_seeds"),
    "proxy": ("core_proxy", "harness", "seeds"),
}

_STATUS = re.compile(r"#(\d+)\s+(?:DONE|RELOAD|pulse|INITED|NEW|REDUCE)\s+(.*)")


def _spec(name: str) -> tuple[str, str, str]:
    """``(module, harness, seeds)`` of a listed target or of ``module:harness:seeds``."""
    listed = TARGETS.get(name)
    if listed is not None:
        return f"fuzz.{listed[0]}", listed[1], listed[2]
    module_name, harness, seeds = name.split(":")
    return module_name, harness, seeds


def _load(name: str) -> tuple[Callable[[bytes], None], Callable[[], list[bytes]]]:
    module_name, harness, seeds = _spec(name)
    module = importlib.import_module(module_name)
    return getattr(module, harness), getattr(module, seeds)


def _instrumented_modules(name: str) -> list[str]:
    module_name = _spec(name)[0]
    extra = ["yaml"] if module_name == "fuzz.config_loader" else []
    return ["metaprotocol", module_name, *extra]


def _child(name: str, libfuzzer_args: list[str]) -> None:
    """Inside the target's own process: instrument, then hand over to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=_instrumented_modules(name)):
        harness, _ = _load(name)
    atheris.Setup([sys.argv[0], *libfuzzer_args], harness)
    atheris.Fuzz()


def _write_seeds(name: str, directory: Path) -> int:
    _, seeds = _load(name)
    directory.mkdir(parents=True, exist_ok=True)
    found = seeds()
    for index, seed in enumerate(found):
        (directory / f"seed-{index:04d}").write_bytes(seed)
    return len(found)


def _replay(name: str, paths: list[str]) -> int:
    harness, _ = _load(name)
    failed = 0
    for path in paths:
        data = bytes.fromhex(path[4:]) if path.startswith("hex:") else Path(path).read_bytes()
        try:
            harness(data)
        except Exception:
            failed += 1
            print(f"== {name} {path}: FAILED (input {data.hex()})")
            traceback.print_exc()
        else:
            print(f"== {name} {path}: ok")
    return 1 if failed else 0


def _summary(log: str) -> str:
    """The last libFuzzer status line: inputs executed, coverage, features, corpus."""
    last = ""
    for line in log.splitlines():
        match = _STATUS.search(line)
        if match:
            last = f"{int(match.group(1)):,} inputs  {match.group(2).strip()}"
    return last or "(no libFuzzer status line)"


_FIELD = re.compile(r"(cov|ft|corp|exec/s|rss): (\S+)")
_STAT = re.compile(r"stat::(\w+): +(\S+)")


def _report(log_dir: Path) -> str:
    """A markdown table of the runs whose libFuzzer output ``--log-dir`` kept."""
    rows = [
        "| target | inputs | cov | ft | corpus | exec/s | slowest input | peak RSS | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(log_dir.glob("*.log")):
        log = path.read_text(errors="replace")
        fields: dict[str, str] = {}
        for line in log.splitlines():
            if _STATUS.search(line):
                fields.update(_FIELD.findall(line))
        stats = dict(_STAT.findall(log))
        inputs = int(stats.get("number_of_executed_units", "0"))
        found = "=== Uncaught Python exception" in log or "ERROR: libFuzzer" in log
        rows.append(
            f"| {path.stem} | {inputs:,} | {fields.get('cov', '?')} | {fields.get('ft', '?')} "
            f"| {fields.get('corp', '?')} | {stats.get('average_exec_per_sec', '?')} "
            f"| {stats.get('slowest_unit_time_sec', '?')} s | {stats.get('peak_rss_mb', '?')} MB "
            f"| {'FINDING' if found else 'clean'} |"
        )
    return "\n".join(rows)


def _run_target(name: str, args: argparse.Namespace, workdir: Path) -> bool:
    slug = name.replace(":", "-")  # a module:harness:seeds target, as a file name
    corpus = (Path(args.corpus) if args.corpus else workdir / "corpus") / slug
    seeded = _write_seeds(name, corpus)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    prefix = f"{artifacts}/{slug}-"
    libfuzzer = [
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-max_len={args.max_len}",
        f"-artifact_prefix={prefix}",
        "-print_final_stats=1",
    ]
    if args.runs:
        libfuzzer.append(f"-runs={args.runs}")
    if args.seconds:
        libfuzzer.append(f"-max_total_time={args.seconds}")
    command = [sys.executable, "-m", "fuzz.run", "--child", name, "--", *libfuzzer, str(corpus)]
    before = set(artifacts.glob(f"{slug}-*"))
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.log_dir) / f"{slug}.log").write_text(log)
    new = sorted(set(artifacts.glob(f"{slug}-*")) - before)
    ok = proc.returncode == 0 and not new
    verdict = "ok" if ok else f"FAILED (exit {proc.returncode})"
    print(f"{name:24} {verdict:18} {elapsed:6.1f}s  seeds {seeded:4}  {_summary(log)}", flush=True)
    if not ok:
        crash = log.find("=== Uncaught Python exception")
        print(log[crash : crash + 6000] if crash >= 0 else log[-6000:])
        for artifact in new:
            data = artifact.read_bytes()
            shown = data.hex() if len(data) <= 4096 else data[:4096].hex() + "..."
            print(f"reproducer {artifact} ({len(data)} bytes): {shown}")
            print(f"  replay: python -m fuzz.run --replay {name} {artifact}")
            if len(data) <= 4096:
                print(f"      or: python -m fuzz.run --replay {name} hex:{data.hex()}")
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        rest = argv[2:]
        _child(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "targets", nargs="*", help="targets to run (default: all), or module:harness:seeds"
    )
    parser.add_argument("--seconds", type=int, default=0, help="time per target")
    parser.add_argument("--runs", type=int, default=0, help="inputs per target")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-limit-mb", type=int, default=1024)
    parser.add_argument("--max-len", type=int, default=4096, help="longest input, in bytes")
    parser.add_argument("--corpus", help="keep the corpus here (default: a temporary directory)")
    parser.add_argument("--artifacts", default=".fuzz/artifacts", help="save failing inputs here")
    parser.add_argument("--log-dir", help="save each target's libFuzzer output here")
    parser.add_argument(
        "--replay", action="store_true", help="run inputs through: files, or hex:HEX"
    )
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--report", metavar="LOG_DIR", help="tabulate the runs --log-dir kept")
    args = parser.parse_args(argv)
    if args.report:
        print(_report(Path(args.report)))
        return 0
    if args.list:
        print("\n".join(TARGETS))
        return 0
    if args.replay:
        if len(args.targets) < 2:
            parser.error("--replay TARGET FILE...")
        return _replay(args.targets[0], args.targets[1:])
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS and n.count(":") != 2]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {list(TARGETS)}")
    if not args.seconds and not args.runs:
        parser.error("give --seconds or --runs (a bound for every target)")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with tempfile.TemporaryDirectory(prefix="metaprotocol-fuzz-") as tmp:
        failed = [n for n in names if not _run_target(n, args, Path(tmp))]
    if failed:
        print(f"fuzzing FAILED: {', '.join(failed)}")
        return 1
    print(f"fuzzing ok: {len(names)} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
