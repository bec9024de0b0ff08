"""The end-to-end benchmark command: start everything, alternate targets per round, report.

Groups share one upstream: ``redis`` (redis-server; scenarios redis-p1 and redis-p16),
``redis-tls`` (the same, with TLS terminated by the proxy: redis-benchmark --tls; set side
by side with redis-p1, it gives the TLS cost per request), ``http`` (nginx serving a
122-byte file; wrk), ``http-tls`` (the same over https, TLS terminated by the proxy),
``thrift`` and ``dubbo`` (canned servers; our load generator), ``redis-shards`` (three
redis-servers; MSET/MGET split across them). A group starts its upstream and every proxy in
front of it, warms each target up once, then runs ``rounds`` rounds; each round runs every
scenario of the group against every target, in an order rotated by one each round, so slow
drifts of a shared machine spread over all targets. Reported numbers are medians over the
rounds. After the redis rounds: py-spy profiles of metaprotocol under ``redis-benchmark -P
1``, and the memory measurements on freshly started proxies. Two groups are not load
scenarios: ``micro`` (benchmarks/codecs.py and benchmarks/core.py on each build, micro.py)
and ``isolation`` (benchmarks/isolation.py's bounds on each adapter and build, bounds.py).
Each goal of issue 18 is then checked on the run's own data (goals.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from types import FrameType

from benchmarks.isolation import Outcome

from . import bounds, drivers, goals, lineup, micro, targets
from .drivers import DriverError, Load
from .memory import MemoryResult, idle_connections, inflight_requests
from .procs import Procs, StartError, cpu_times, raise_nofile
from .profile import Profile, py_spy, record
from .report import Row, Sample, Scenario, chart, markdown, summarise
from .targets import Target

__all__ = ["FULL", "QUICK", "Settings", "main"]

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"


@dataclass(frozen=True)
class Settings:
    rounds: int
    redis_p1: int  # -n per redis-benchmark test (three tests per run)
    redis_p16: int
    wrk_seconds: int
    rpc_requests: int
    idle_connections: int  # metaprotocol and twemproxy; TCP forwarders get FORWARDER_CAP
    inflight: int
    profile_requests: int  # -n per test of the profiled redis-benchmark -P 1
    redis_shards: int  # -n per redis-benchmark test of redis-mset-mget (MSET, MGET)
    isolation_seconds: float  # of non-reader per isolation measurement
    codec_seconds: float  # CPU time per codec measurement (benchmarks/codecs.py)
    core_requests: int  # round trips per core measurement (benchmarks/core.py)


FULL = Settings(3, 20_000, 100_000, 3, 50_000, 10_000, 5_000, 40_000, 5_000, 3.0, 0.5, 200_000)
QUICK = Settings(1, 5_000, 30_000, 1, 20_000, 2_000, 1_000, 0, 2_000, 1.5, 0.1, 20_000)
FORWARDER_CAP = 9_000  # 2 fds per connection under a 20k hard RLIMIT_NOFILE
# rloop (a Rust asyncio event loop, ``pip install rloop``) runs the asyncio adapter through
# the benchmark's own launcher (mprun.py); a target that does not start is a note.
ADAPTERS = ("asyncio", "uvloop", "rloop", "blocking", "trio")
PROFILES = (("redis-p1", "asyncio"), ("redis-p1", "uvloop"), ("redis-p16", "asyncio"))

SCENARIOS = (
    Scenario(
        "redis-p1",
        "Redis, redis-benchmark -t ping_mbulk,set,get -c 50 -P 1",
        "redis",
        ("twemproxy", "haproxy-tcp", "nginx-stream", "rawfwd/uvloop", "rawfwd/asyncio"),
    ),
    Scenario(
        "redis-p16",
        "Redis, redis-benchmark -t ping_mbulk,set,get -c 50 -P 16",
        "redis",
        ("twemproxy", "haproxy-tcp", "nginx-stream", "rawfwd/uvloop", "rawfwd/asyncio"),
    ),
    Scenario(
        "redis-tls-p1",
        "Redis over TLS to the proxy (plaintext upstream), redis-benchmark --tls -t "
        "ping_mbulk,set,get -c 50 -P 1",
        "redis-tls",
        ("haproxy-tcp-tls",),
    ),
    Scenario(
        "http",
        "HTTP/1.1, wrk -t1 -c50 against nginx (122-byte static file)",
        "http",
        ("haproxy-http", "haproxy-tcp", "nginx-stream", "mitmdump", "rawfwd/uvloop"),
    ),
    Scenario(
        "http-tls",
        "HTTP/1.1 over TLS to the proxy (plaintext upstream), wrk -t1 -c50 https (122-byte "
        "static file)",
        "http-tls",
        ("haproxy-http-tls",),
    ),
    Scenario(
        "thrift",
        "Thrift (framed binary), 50 clients, one call in flight each",
        "thrift",
        ("rawfwd/uvloop", "rawfwd/asyncio", "haproxy-tcp"),
    ),
    Scenario(
        "dubbo",
        "Dubbo (Hessian2), 50 clients, one call in flight each",
        "dubbo",
        ("rawfwd/uvloop", "rawfwd/asyncio", "haproxy-tcp"),
    ),
    Scenario(
        "redis-mset-mget",
        "Redis, three shards: redis-benchmark -c 50 -r 100000, MSET and MGET of 10 random keys "
        "(split across the shards)",
        "redis-shards",
        ("twemproxy",),
    ),
)
GROUPS = (
    "micro",
    "redis",
    "redis-tls",
    "http",
    "http-tls",
    "thrift",
    "dubbo",
    "redis-shards",
    "isolation",
)


def _loads(s: Settings, ca: str) -> dict[str, Callable[[int], Load]]:
    return {
        "redis-p1": lambda port: drivers.redis_benchmark(port, pipeline=1, requests=s.redis_p1),
        "redis-tls-p1": lambda port: drivers.redis_benchmark(
            port, pipeline=1, requests=s.redis_p1, tls_ca=ca
        ),
        "redis-p16": lambda port: drivers.redis_benchmark(port, pipeline=16, requests=s.redis_p16),
        "http": lambda port: drivers.wrk(port, "/index.html", seconds=s.wrk_seconds),
        "http-tls": lambda port: drivers.wrk(port, "/index.html", seconds=s.wrk_seconds, tls=True),
        "thrift": lambda port: drivers.loadgen("thrift", port, requests=s.rpc_requests),
        "dubbo": lambda port: drivers.loadgen("dubbo", port, requests=s.rpc_requests),
        "redis-mset-mget": lambda port: drivers.redis_mset_mget(port, requests=s.redis_shards),
    }


def _warmups(ca: str) -> dict[str, Callable[[int], Load]]:
    """One short load per group before its rounds (bounded: a target that hangs on it is
    skipped within a minute)."""
    return {
        "redis": lambda port: drivers.redis_benchmark(port, pipeline=1, requests=1000, timeout=60),
        "redis-tls": lambda port: drivers.redis_benchmark(
            port, pipeline=1, requests=1000, tls_ca=ca, timeout=60
        ),
        "http": lambda port: drivers.wrk(port, "/index.html", seconds=1),
        "http-tls": lambda port: drivers.wrk(port, "/index.html", seconds=1, tls=True),
        "thrift": lambda port: drivers.loadgen("thrift", port, requests=2000),
        "dubbo": lambda port: drivers.loadgen("dubbo", port, requests=2000),
        "redis-shards": lambda port: drivers.redis_mset_mget(port, requests=1000),
    }


class Run:
    """One invocation: its processes, samples, notes and outputs."""

    def __init__(
        self, settings: Settings, adapters: tuple[str, ...], procs: Procs, out: Path
    ) -> None:
        self.settings = settings
        self.out = out
        self.experiments = False
        self.compiled: tuple[str, tuple[str, ...]] | None = None
        self.adapters = adapters
        self.procs = procs
        self.samples: dict[tuple[str, str], list[Sample]] = {}
        self.kinds: dict[str, str] = {"direct": "direct"}
        self.failed: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []
        self.memory: list[MemoryResult] = []
        self.profile_md: list[str] = []
        self.micro: dict[str, dict[str, object]] = {}
        self.isolation: list[Outcome] = []
        self.timings: dict[str, float] = {}
        self.tls = targets.make_certificates(procs.workdir)
        self.upstream_pgids: list[int] = []  # the current group's upstream servers

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # Throughput ------------------------------------------------------------------------

    def timed_group(self, group: str, profile: bool, memory: bool) -> None:
        """Run ``group`` and record (and print) how long it took."""
        started = time.monotonic()
        try:
            if group == "micro":
                self.run_micro()
            elif group == "isolation":
                self.run_isolation()
            else:
                self.group(group, profile, memory)
        finally:
            self.timings[group] = time.monotonic() - started
            self.log(f"{group}: took {self.timings[group]:.0f} s")

    def builds(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(target prefix, python, adapters) of the interpreted build and the compiled one."""
        out = [("metaprotocol", sys.executable, self.adapters)]
        if self.compiled is not None:
            out.append(("metaprotocol[mypyc]", *self.compiled))
        return out

    def run_micro(self) -> None:
        pythons = {"interpreted": sys.executable}
        if self.compiled is not None:
            pythons["mypyc"] = self.compiled[0]
        settings = micro.MicroSettings(self.settings.codec_seconds, self.settings.core_requests)
        self.log(f"micro: benchmarks/codecs.py and benchmarks/core.py on {', '.join(pythons)}")
        self.micro = dict(micro.measure(pythons, settings, self.notes))

    def run_isolation(self) -> None:
        self.log(f"isolation: {self.settings.isolation_seconds:g} s of non-reader each")
        self.isolation = bounds.measure(
            self.builds(), self.settings.isolation_seconds, self.log, self.notes
        )

    def group(self, group: str, profile: bool, memory: bool) -> None:
        scenarios = [s for s in SCENARIOS if s.group == group]
        ca = self.tls.ca
        loads = _loads(self.settings, ca)
        ports, servers = lineup.start_upstream(group, self.procs)
        upstream = ports[0]
        self.upstream_pgids = [proc.pgid for proc in servers]
        if group in ("redis-tls", "http-tls"):  # the upstream is plaintext: no direct row
            started: list[Target] = []
            factories = lineup.tls_factories(group, self.adapters, self.tls, self.compiled)
            skipped = [a for a in self.adapters if a in lineup.NO_TLS]
            if skipped:
                self.notes.append(f"{group}: not measured on {', '.join(skipped)} (no TLS)")
        elif group == "redis-shards":  # no direct row either: a client cannot split MGET
            started = []
            factories = lineup.shard_factories(self.adapters, ports, self.compiled)
        else:
            started = [Target("direct", "direct", upstream)]
            factories = lineup.factories(group, self.adapters, self.experiments, self.compiled)
        for name, factory in factories:
            try:
                target = factory(self.procs, upstream)
            except (StartError, OSError) as exc:
                self._skip(group, name, f"did not start: {_reason(exc)}")
                continue
            self.kinds[target.name] = target.kind
            started.append(target)
            if group == "redis-shards":
                problem = drivers.split_problem(target.port, ports)
                if problem is not None:
                    self._skip(group, target.name, problem)
                    started.pop()
                    if target.proc is not None:
                        self.procs.stop(target.proc)
        live = []
        warmup = _warmups(ca)[group]
        for target in started:
            try:
                warmup(target.port)
                live.append(target)
            except DriverError as exc:
                self._skip(group, target.name, f"failed its warm-up: {_reason(exc)}")
        self.log(f"{group}: {len(live)} targets: {', '.join(t.name for t in live)}")
        for rnd in range(self.settings.rounds):
            for scenario in scenarios:
                order = live[rnd % len(live) :] + live[: rnd % len(live)] if live else []
                for target in order:
                    self._measure(scenario.key, target, loads[scenario.key])
            self.log(f"{group}: round {rnd + 1}/{self.settings.rounds} done")
        if profile:
            self.profile([t for t in live if t.kind == "metaprotocol"])
        for target in started:
            if target.proc is not None:
                self.procs.stop(target.proc)
        if memory:
            self.measure_memory(upstream)

    def _skip(self, group: str, name: str, why: str) -> None:
        self.notes.append(f"{name} ({group}): {why}")
        self.log(f"{name} ({group}): {why}")
        for s in SCENARIOS:
            if s.group == group:
                self.failed[(s.key, name)] = why
                self.kinds.setdefault(name, "metaprotocol" if "metaprotocol" in name else "")

    def _measure(self, key: str, target: Target, load: Callable[[int], Load]) -> None:
        if (key, target.name) in self.failed:
            return
        if target.proc is not None and target.proc.popen.poll() is not None:
            self.failed[(key, target.name)] = f"exited: {target.proc.tail(3)}"
            return
        before = cpu_times(target.proc.pgid) if target.proc is not None else None
        upstream_before = sum(sum(cpu_times(pgid)) for pgid in self.upstream_pgids)
        try:
            result = load(target.port)
        except DriverError as exc:
            self.failed[(key, target.name)] = _reason(exc)
            self.notes.append(f"{target.name} ({key}): {_reason(exc)}")
            return
        upstream = sum(sum(cpu_times(pgid)) for pgid in self.upstream_pgids) - upstream_before
        sample = Sample(result, None, upstream_seconds=upstream)
        if target.proc is not None and before is not None:
            user, kernel = (a - b for a, b in zip(cpu_times(target.proc.pgid), before, strict=True))
            sample = replace(
                sample, cpu_seconds=user + kernel, user_seconds=user, kernel_seconds=kernel
            )
        self.samples.setdefault((key, target.name), []).append(sample)
        cpu_text = ""
        if sample.cpu_seconds is not None and result.requests:
            per = 1e6 / result.requests
            cpu_text = (
                f", {sample.cpu_seconds * per:.1f} µs/req "
                f"(user {(sample.user_seconds or 0.0) * per:.1f}, "
                f"kernel {(sample.kernel_seconds or 0.0) * per:.1f})"
            )
        self.log(f"  {key:9} {target.name:22} {result.rps:>10,.0f} req/s{cpu_text}")

    def rows(self) -> list[Row]:
        out = []
        for s in SCENARIOS:
            names = ["direct"] + [
                n for (k, n) in {**self.samples, **self.failed} if k == s.key and n != "direct"
            ]
            for name in dict.fromkeys(names):
                samples = self.samples.get((s.key, name), [])
                if not samples and (s.key, name) not in self.failed:
                    continue
                row = summarise(s.key, name, self.kinds.get(name, ""), samples)
                if not samples:
                    row.note = self.failed[(s.key, name)]
                out.append(row)
        return out

    # Profile ---------------------------------------------------------------------------

    def profile(self, ours: list[Target]) -> None:
        if py_spy() is None:
            self.notes.append("profile skipped: py-spy is not installed (pip install py-spy)")
            return
        n = self.settings.profile_requests
        self.profile_md += [
            "## Profile: metaprotocol under redis-benchmark",
            "",
            "py-spy (250 Hz, --nonblocking, idle samples dropped) attached to the proxy while "
            f"`redis-benchmark -t ping_mbulk,set,get -c 50 -n {n} -P 1` (or `-P 16`) runs. "
            "Self = the function itself, C calls included (a socket send shows up as the "
            "Python frame that called it); inclusive = it and its callees. Raw collapsed stacks "
            "(flamegraph.pl input) are kept as `profile-SCENARIO-ADAPTER.txt` beside this file.",
            "",
        ]
        by_name = {t.name: t for t in ours}
        for scenario, adapter in PROFILES:
            target = by_name.get(f"metaprotocol/{adapter}")
            if target is None or target.proc is None:
                continue
            pipeline = 16 if scenario == "redis-p16" else 1
            out = self.out / f"profile-{scenario}-{adapter}.txt"
            self.log(f"profiling {target.name} under {scenario}")
            try:
                prof = record(
                    target.proc.popen.pid,
                    out,
                    partial(drivers.redis_benchmark, target.port, pipeline=pipeline, requests=n),
                )
            except (RuntimeError, DriverError) as exc:
                self.notes.append(f"profile of {target.name} failed: {exc}")
                continue
            if prof is not None:
                self.profile_md += _profile_tables(f"{target.name}, {scenario}", prof)

    # Memory ----------------------------------------------------------------------------

    def measure_memory(self, upstream: int) -> None:
        n = self.settings.idle_connections
        for name, factory in lineup.factories("redis", self.adapters):
            count = (
                n
                if name.startswith("metaprotocol") or name == "twemproxy"
                else min(n, FORWARDER_CAP)
            )
            try:
                target = factory(self.procs, upstream)
            except (StartError, OSError) as exc:
                self.notes.append(f"memory of {name}: did not start: {_reason(exc)}")
                continue
            assert target.proc is not None
            try:
                self.log(f"memory: {count} idle connections to {name}")
                self.memory.append(idle_connections(name, target.port, target.proc.pgid, count))
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.notes.append(f"memory of {name} failed: {exc!r}")
            finally:
                self.procs.stop(target.proc)
        for adapter in self.adapters:
            name = f"metaprotocol/{adapter}"

            started: list[Target] = []

            def start(
                hole: int, adapter: str = adapter, started: list[Target] = started
            ) -> tuple[int, int]:
                t = targets.start_metaprotocol(
                    self.procs, adapter, "redis", hole, extra="    request_timeout: 0\n"
                )
                assert t.proc is not None
                started.append(t)
                return t.port, t.proc.pgid

            try:
                self.log(f"memory: {self.settings.inflight} in-flight requests on {name}")
                self.memory += inflight_requests(name, start, self.settings.inflight)
            except (OSError, TimeoutError, ConnectionError, StartError) as exc:
                self.notes.append(f"in-flight memory of {name} failed: {exc!r}")
            finally:
                for t in started:
                    if t.proc is not None:
                        self.procs.stop(t.proc)


def _reason(exc: BaseException) -> str:
    """An error as one line of a Markdown list: its first line and, when the cause is further
    down (a process's log tail), its last one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text[:300]


def _profile_tables(name: str, prof: Profile) -> list[str]:
    out = [f"### {name} ({prof.samples} samples)", "", "| self | function |", "|--:|---|"]
    out += [f"| {share:.1%} | `{func}` |" for func, share in prof.hot_spots(15)]
    out += ["", "| inclusive | metaprotocol function |", "|--:|---|"]
    out += [f"| {share:.1%} | `{func}` |" for func, share in prof.inclusive(15)]
    out += ["", "| self | file |", "|--:|---|"]
    out += [f"| {share:.1%} | `{f}` |" for f, share in prof.by_file(10)]
    return [*out, ""]


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def _machine() -> list[str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os

    mitm = targets.mitmdump_binary()
    return [
        f"- machine: {os.cpu_count()} cores ({model}), Linux {platform.release()}, shared "
        "VM, everything on 127.0.0.1 (client, proxy and server share the cores)",
        f"- Python {platform.python_version()}; "
        + "; ".join(
            _version(a)
            for a in (
                ["haproxy", "-v"],
                ["nginx", "-v"],
                ["nutcracker", "-V"],
                ["redis-server", "-v"],
                ["wrk", "-v"],
            )
        )
        + (f"; mitmdump {_version([str(mitm), '--version']).split()[-1]}" if mitm else ""),
    ]


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 round, small counts (< 2 min)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--adapters", default=",".join(ADAPTERS), help=f"comma list ({','.join(ADAPTERS)})"
    )
    parser.add_argument(
        "--groups", default=",".join(GROUPS), help=f"comma list of {','.join(GROUPS)}"
    )
    parser.add_argument(
        "--experiments",
        action="store_true",
        help="add A/B targets: metaprotocol/uvloop-noobserve (engine without observer events)",
    )
    parser.add_argument(
        "--compiled",
        metavar="PYTHON",
        help="also run the mypyc build installed in this interpreter "
        "(METAPROTOCOL_MYPYC=1 pip install .), as metaprotocol[mypyc]/ADAPTER",
    )
    parser.add_argument(
        "--compiled-adapters", default="uvloop", help="adapters for --compiled (comma list)"
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.e2e", *(sys.argv[1:] if argv is None else argv)])
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = replace(settings, rounds=args.rounds)
    adapters = tuple(a for a in args.adapters.split(",") if a)
    groups = [g for g in args.groups.split(",") if g]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    missing = [
        b for b in ("redis-server", "redis-benchmark", "wrk", "nginx") if not shutil.which(b)
    ]
    if missing:
        print(
            f"missing required binaries: {', '.join(missing)} (see docs/benchmarks.md)",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    signal.signal(signal.SIGTERM, _on_term)
    workdir = Path(tempfile.mkdtemp(prefix="metaprotocol-e2e-"))
    procs = Procs(workdir)
    run = Run(settings, adapters, procs, args.out)
    run.experiments = args.experiments
    if args.compiled:
        compiled_adapters = tuple(a for a in args.compiled_adapters.split(",") if a)
        run.compiled = (args.compiled, compiled_adapters)
    started = time.monotonic()
    try:
        for group in groups:
            run.timed_group(
                group,
                profile=group == "redis" and not args.no_profile and settings.profile_requests > 0,
                memory=group == "redis" and not args.no_memory,
            )
    except KeyboardInterrupt:
        run.notes.append("interrupted: partial results")
    finally:
        procs.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            run.log(f"work directory kept: {workdir}")
    elapsed = time.monotonic() - started
    if targets.mitmdump_binary() is None and "http" in groups:
        run.notes.append(
            "mitmdump not installed: `python3 -m venv benchmarks/.venv-mitm && "
            "benchmarks/.venv-mitm/bin/pip install mitmproxy`"
        )
    rows = run.rows()
    mode = "--quick" if args.quick else "full"
    data = {
        "mode": mode,
        "command": command,
        "settings": asdict(settings),
        "seconds": elapsed,
        "timings": run.timings,
        "rows": [asdict(r) for r in rows],
        "memory": [asdict(m) | {"bytes_each": m.bytes_per_item} for m in run.memory],
        "micro": run.micro,
        "isolation": [asdict(o) for o in run.isolation],
        "notes": run.notes,
    }
    verdicts = goals.evaluate(data)
    data["goals"] = [asdict(v) for v in verdicts]
    header = [
        "# metaprotocol end-to-end benchmark",
        "",
        f"`{command}` ({mode}: {settings.rounds} round(s), targets alternating per round, "
        f"medians), {time.strftime('%Y-%m-%d %H:%M')}, took {elapsed:.0f} s ("
        + ", ".join(f"{g} {t:.0f} s" for g, t in run.timings.items())
        + ").",
        "",
        *_machine(),
        "- every proxy single-threaded / one worker; proxy CPU = utime+stime of its process "
        "group from /proc during the load, divided by the requests completed; user and kernel "
        "are its two parts; upstream = utime+stime of the upstream server(s) per request (on "
        "the direct row: the server's own cost)",
        "",
    ]
    chosen = [s for s in SCENARIOS if s.group in groups]
    problem = chart(args.out / "latest.png", chosen, rows, f"metaprotocol e2e ({mode})", run.memory)
    if problem:
        run.notes.append(problem)
    sections = [
        *goals.markdown(verdicts),
        *micro.markdown(run.micro),
        *bounds.markdown(run.isolation, settings.isolation_seconds),
    ]
    text = markdown(header, chosen, rows, run.memory, run.profile_md, run.notes, sections)
    (args.out / "latest.md").write_text(text)
    (args.out / "latest.json").write_text(json.dumps(data, indent=1))
    print(text)
    return 0
