"""Issue 18's goals, each checked on one run's own data (``latest.json``).

``evaluate(data)`` takes what ``benchmarks.e2e`` writes to ``latest.json`` (the scenario
rows, memory, the codec and core figures of each build, the isolation bounds) and answers
one ``Verdict`` per goal: ``met`` / ``not met`` with the figure reached, ``not measured``
when the run lacks the data (never a guess), or ``figure`` for a scenario that has figures
to report but no goal to meet. The codec goals are ``benchmarks/codecs.py``'s (decode +
routing metadata, best batch, compiled build). A recorded JSON can be checked again without
the benchmark's peers:

    python -m benchmarks.e2e.goals benchmarks/results/latest.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.codecs import GOALS as CODEC_GOALS

__all__ = [
    "CODEC_GOALS",
    "CORE_GOAL_US",
    "E2E_GOALS",
    "IDLE_GOAL_BYTES",
    "ISOLATION_BOUND_MIB",
    "E2eGoal",
    "Verdict",
    "evaluate",
    "main",
    "markdown",
]

MET, NOT_MET, NOT_MEASURED, FIGURE = "met", "not met", "not measured", "figure"
MYPYC = "[mypyc]"  # in a target's name: the compiled build (metaprotocol[mypyc]/ADAPTER)


@dataclass(frozen=True)
class E2eGoal:
    """A goal on the scenario rows: metaprotocol's best shipped adapter of one build (or
    the named ``target``) against ``peer`` in ``scenario``. ``{loop}`` in ``peer`` is the
    chosen adapter's event loop (``rawfwd/{loop}``: the raw forwarder on the same loop)."""

    scenario: str
    peer: str
    compiled: bool  # the mypyc build's rows (metaprotocol[mypyc]/...), else the interpreted
    min_ratio: float | None = None  # throughput >= min_ratio x the peer's
    max_cpu: float | None = None  # CPU per request <= max_cpu x the peer's
    max_p99: float | None = None  # p99 latency <= max_p99 x the peer's
    target: str | None = None  # a given target instead of the best adapter

    def text(self) -> str:
        build = "compiled" if self.compiled else "interpreted"
        who = self.target or f"best {build} adapter"
        parts = []
        if self.min_ratio is not None:
            parts.append(f"req/s >= {self.min_ratio:g}x")
        if self.max_cpu is not None:
            parts.append(f"CPU/req <= {self.max_cpu:g}x")
        if self.max_p99 is not None:
            parts.append(f"p99 <= {self.max_p99:g}x")
        peer = self.peer.replace("rawfwd/{loop}", "the raw forwarder on the same loop")
        return f"{self.scenario}, {who}: {', '.join(parts)} {peer}"


E2E_GOALS: tuple[E2eGoal, ...] = (
    E2eGoal("http", "haproxy-http", True, min_ratio=1.0, max_cpu=1.0),
    E2eGoal("http", "haproxy-http", False, min_ratio=0.6),
    E2eGoal("redis-p1", "twemproxy", True, max_cpu=1.5),
    E2eGoal("redis-p1", "rawfwd/{loop}", True, min_ratio=1.0),
    E2eGoal("redis-p1", "twemproxy", True, max_p99=2.0),
    E2eGoal("redis-p16", "twemproxy", True, min_ratio=0.8),
    E2eGoal("dubbo", "rawfwd/uvloop", True, min_ratio=1.0),
    E2eGoal("dubbo", "rawfwd/uvloop", False, min_ratio=0.8),
    E2eGoal("thrift", "rawfwd/uvloop", True, min_ratio=1.0),
    E2eGoal("thrift", "rawfwd/uvloop", False, min_ratio=0.8),
    *(
        E2eGoal(scenario, "metaprotocol/asyncio", False, max_cpu=2.0, target="metaprotocol/trio")
        for scenario in ("redis-p1", "redis-p16", "http", "thrift", "dubbo")
    ),
)
"""Issue 18's end-to-end goals. The raw forwarder of the Dubbo and Thrift goals is the uvloop
one (the fastest of them), whatever loop the best adapter runs on."""

CORE_GOAL_US = 3.0  # core round trip, compiled, observer events off (benchmarks/core.py)
IDLE_GOAL_BYTES = 10 * 1024  # RSS per idle connection, worst adapter (issue 6)
ISOLATION_BOUND_MIB = 32 + 32
"""Peak RSS above warm-up under a non-reading client: the default ``output_buffer_limit``
(32 MiB) plus the 32 MiB of slack tests/e2e/test_isolation.py allows (issue 12's bound)."""


@dataclass(frozen=True)
class Verdict:
    goal: str
    target: str  # who reached it ("-" when nobody was measured)
    reached: str  # the figure(s), or what was missing
    status: str  # met | not met | not measured | figure


def _rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data.get("rows", []) if r.get("rps")]


def _adapter(target: str) -> str:
    return target.rsplit("/", 1)[-1]


def _shipped(row: Mapping[str, Any], compiled: bool) -> bool:
    """A shipped adapter of one build: not an A/B experiment (``.../uvloop-noobserve``), nor
    rloop (the benchmark's own launcher)."""
    name = str(row["target"])
    return (
        row.get("kind") == "metaprotocol"
        and "-" not in _adapter(name)
        and _adapter(name) != "rloop"
        and (MYPYC in name) == compiled
    )


def _check(goal: E2eGoal, mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> tuple[str, bool]:
    """What ``mine`` reached against ``theirs``, and whether the goal is met."""
    parts: list[str] = []
    met = True
    if goal.min_ratio is not None:
        ratio = mine["rps"] / theirs["rps"]
        parts.append(f"{ratio:.2f}x req/s ({mine['rps']:,.0f} vs {theirs['rps']:,.0f})")
        met = met and ratio >= goal.min_ratio
    if goal.max_cpu is not None:
        if mine.get("cpu_us") is None or not theirs.get("cpu_us"):
            parts.append("CPU not measured")
            met = False
        else:
            cpu = mine["cpu_us"] / theirs["cpu_us"]
            parts.append(f"{cpu:.2f}x CPU ({mine['cpu_us']:.1f} vs {theirs['cpu_us']:.1f} µs)")
            met = met and cpu <= goal.max_cpu
    if goal.max_p99 is not None:
        if not theirs.get("p99_ms"):
            parts.append("p99 not measured")
            met = False
        else:
            p99 = mine["p99_ms"] / theirs["p99_ms"]
            parts.append(f"{p99:.2f}x p99 ({mine['p99_ms']:.2f} vs {theirs['p99_ms']:.2f} ms)")
            met = met and p99 <= goal.max_p99
    return ", ".join(parts), met


def _e2e(goal: E2eGoal, rows: Sequence[Mapping[str, Any]]) -> Verdict:
    here = {r["target"]: r for r in rows if r["scenario"] == goal.scenario}
    mine = [
        r
        for r in here.values()
        if (r["target"] == goal.target if goal.target else _shipped(r, goal.compiled))
    ]
    pairs = [(r, here.get(goal.peer.replace("{loop}", _adapter(r["target"])))) for r in mine]
    paired = [(r, p) for r, p in pairs if p is not None]
    if not paired:
        who = goal.target or ("compiled" if goal.compiled else "interpreted") + " build"
        missing = who if not mine else goal.peer.replace("{loop}", "<loop>")
        return Verdict(goal.text(), "-", f"{missing} not measured in {goal.scenario}", NOT_MEASURED)
    best, peer = max(paired, key=lambda pair: pair[0]["rps"])
    reached, met = _check(goal, best, peer)
    return Verdict(goal.text(), f"{best['target']} vs {peer['target']}", reached, _status(met))


def _status(met: bool) -> str:
    return MET if met else NOT_MET


def _micro(data: Mapping[str, Any], build: str) -> Mapping[str, Any]:
    micro: Mapping[str, Any] = data.get("micro", {}).get(build) or {}
    return micro


def _codec_goals(data: Mapping[str, Any]) -> Iterator[Verdict]:
    results = {
        c["label"]: c
        for c in _micro(data, "mypyc").get("codecs", [])
        if c.get("operation") == "decode"
    }
    for label, goal in CODEC_GOALS.items():
        text = f"codec {label}, compiled, decode + metadata >= {goal / 1e6:g}M msgs/s"
        found = results.get(label)
        if found is None:
            yield Verdict(text, "-", "compiled codec figures not measured", NOT_MEASURED)
            continue
        best = float(found["best_msgs_per_s"])
        yield Verdict(
            text, "metaprotocol[mypyc]", f"{best / 1e6:.2f}M msgs/s", _status(best >= goal)
        )


def _core_goal(data: Mapping[str, Any]) -> Verdict:
    text = f"core round trip, compiled, observer events off <= {CORE_GOAL_US:g} µs"
    core = _micro(data, "mypyc").get("core")
    if not core:
        return Verdict(text, "-", "compiled core round trip not measured", NOT_MEASURED)
    us = float(core["round_trip_us"])
    return Verdict(text, "metaprotocol[mypyc]", f"{us:.2f} µs", _status(us <= CORE_GOAL_US))


def _figures(
    rows: Sequence[Mapping[str, Any]],
    scenario: str,
    peer: str,
    goal: str,
    extra: Callable[..., str],
) -> Iterator[Verdict]:
    """A scenario with figures and no goal: each metaprotocol row beside ``peer``."""
    here = {r["target"]: r for r in rows if r["scenario"] == scenario}
    theirs = here.get(peer)
    ours = [r for r in here.values() if r.get("kind") == "metaprotocol"]
    if not ours or theirs is None:
        missing = "metaprotocol" if not ours else peer
        yield Verdict(goal, "-", f"{missing} not measured in {scenario}", NOT_MEASURED)
        return
    for r in ours:
        cpu = ""
        if r.get("cpu_us") is not None and theirs.get("cpu_us"):
            cpu = f", {r['cpu_us']:.1f} vs {theirs['cpu_us']:.1f} µs CPU/req"
        text = f"{r['rps'] / theirs['rps']:.2f}x req/s ({r['rps']:,.0f}){cpu}{extra(r, theirs)}"
        yield Verdict(goal, f"{r['target']} vs {peer}", text, FIGURE)


def _tls_cost(plain: Mapping[str, Mapping[str, Any]]) -> Callable[..., str]:
    """What TLS adds to a target's CPU per request, against its plaintext row (and haproxy's:
    haproxy-tcp-tls against haproxy-tcp), when both were measured."""

    def cost(row: Mapping[str, Any], peer: Mapping[str, Any]) -> str:
        def added(r: Mapping[str, Any], plain_name: str) -> float | None:
            base = plain.get(plain_name)
            if base is None or base.get("cpu_us") is None or r.get("cpu_us") is None:
                return None
            return float(r["cpu_us"]) - float(base["cpu_us"])

        mine = added(row, row["target"])
        theirs = added(peer, peer["target"].removesuffix("-tls"))
        if mine is None or theirs is None:
            return ""
        return f"; TLS adds {mine:+.1f} µs/req (haproxy {theirs:+.1f})"

    return cost


def _no_extra(row: Mapping[str, Any], peer: Mapping[str, Any]) -> str:
    return ""


def _isolation(data: Mapping[str, Any]) -> Iterator[Verdict]:
    text = (
        f"isolation: peak RSS above warm-up under a non-reading client <= {ISOLATION_BOUND_MIB} "
        "MiB (output_buffer_limit 32 MiB + 32); innocent p99 alone -> beside it"
    )
    outcomes = data.get("isolation") or []
    if not outcomes:
        yield Verdict(text, "-", "isolation not measured", NOT_MEASURED)
        return
    for target in dict.fromkeys(o["adapter"] for o in outcomes):
        mine = [o for o in outcomes if o["adapter"] == target]
        worst = max(mine, key=lambda o: o["grown_mib"])
        p99s = []
        for o in mine:
            if o["setup"] == "default" and o["alone"] and o["beside"]:
                p99s.append(f"{o['codec']} {o['alone'][1]:.1f} -> {o['beside'][1]:.1f} ms")
        reached = f"{worst['grown_mib']:.1f} MiB ({worst['codec']}, {worst['setup']}); " + (
            "; ".join(p99s) or "innocent p99 not measured"
        )
        yield Verdict(text, target, reached, _status(worst["grown_mib"] <= ISOLATION_BOUND_MIB))


def _idle(data: Mapping[str, Any]) -> Verdict:
    text = f"RSS per idle connection <= {IDLE_GOAL_BYTES // 1024} KiB, worst adapter (issue 6)"
    idle = [
        m
        for m in data.get("memory", [])
        if "idle after" in m.get("note", "") and m["target"].startswith("metaprotocol")
    ]
    if not idle:
        return Verdict(text, "-", "memory not measured", NOT_MEASURED)
    worst = max(idle, key=lambda m: m["bytes_each"])
    return Verdict(
        text,
        worst["target"],
        f"{worst['bytes_each'] / 1024:.1f} KiB",
        _status(worst["bytes_each"] <= IDLE_GOAL_BYTES),
    )


def evaluate(data: Mapping[str, Any]) -> list[Verdict]:
    """Every goal of issue 18 (and the new scenarios' figures) on one run's ``latest.json``."""
    rows = _rows(data)
    out = [_e2e(goal, rows) for goal in E2E_GOALS]
    out += list(_codec_goals(data))
    out.append(_core_goal(data))
    plain = {r["target"]: r for r in rows if r["scenario"] == "redis-p1"}
    http = {r["target"]: r for r in rows if r["scenario"] == "http"}
    out += _figures(
        rows, "redis-tls-p1", "haproxy-tcp-tls", "TLS termination, Redis -P 1", _tls_cost(plain)
    )
    out += _figures(rows, "http-tls", "haproxy-http-tls", "TLS termination, HTTP", _tls_cost(http))
    out += _isolation(data)
    out += _figures(
        rows, "redis-mset-mget", "twemproxy", "Redis MSET/MGET fan-out, 3 shards", _no_extra
    )
    out.append(_idle(data))
    return out


def markdown(verdicts: Sequence[Verdict]) -> list[str]:
    met = sum(v.status == MET for v in verdicts)
    judged = sum(v.status in (MET, NOT_MET) for v in verdicts)
    out = [
        "## Goals (issue 18)",
        "",
        f"{met} of {judged} goals met in this run; "
        f"{sum(v.status == NOT_MEASURED for v in verdicts)} not measured. "
        "Figures: scenarios without a goal of their own, reported beside their peer.",
        "",
        "| goal | target | reached | met |",
        "|---|---|---|:-:|",
    ]
    marks = {MET: "yes", NOT_MET: "**no**", NOT_MEASURED: "not measured", FIGURE: "figure"}
    for v in verdicts:
        out.append(f"| {v.goal} | {v.target} | {v.reached} | {marks[v.status]} |")
    return [*out, ""]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m benchmarks.e2e.goals LATEST.json", file=sys.stderr)
        return 2
    data = json.loads(Path(args[0]).read_text())
    print("\n".join(markdown(evaluate(data))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
