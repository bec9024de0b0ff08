"""Render end-to-end results: a Markdown report (tables, ratios) and a PNG chart; the goals
are checked in goals.py."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .drivers import Load
from .memory import MemoryResult

__all__ = ["Row", "Sample", "Scenario", "chart", "markdown", "summarise"]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    group: str
    peers: tuple[str, ...]  # targets metaprotocol is compared with, in column order


@dataclass(frozen=True)
class Sample:
    load: Load
    cpu_seconds: float | None  # the proxy group's utime+stime during the load
    user_seconds: float | None = None  # the same, user time only
    kernel_seconds: float | None = None  # the same, kernel time only
    upstream_seconds: float | None = None  # the upstream servers' utime+stime


@dataclass
class Row:
    scenario: str
    target: str
    kind: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us: float | None = None
    user_us: float | None = None
    kernel_us: float | None = None
    upstream_us: float | None = None
    errors: int = 0
    runs: int = 0
    rps_runs: list[float] = field(default_factory=list)
    note: str = ""


def summarise(scenario: str, target: str, kind: str, samples: Sequence[Sample]) -> Row:
    """Median of each metric over the rounds."""
    row = Row(scenario, target, kind, runs=len(samples))
    if not samples:
        return row
    row.rps_runs = [s.load.rps for s in samples]
    row.rps = statistics.median(row.rps_runs)
    row.p50_ms = statistics.median(s.load.p50_ms for s in samples)
    row.p99_ms = statistics.median(s.load.p99_ms for s in samples)
    row.errors = sum(s.load.errors for s in samples)
    row.cpu_us = _per_request(samples, lambda s: s.cpu_seconds)
    row.user_us = _per_request(samples, lambda s: s.user_seconds)
    row.kernel_us = _per_request(samples, lambda s: s.kernel_seconds)
    row.upstream_us = _per_request(samples, lambda s: s.upstream_seconds)
    return row


def _per_request(
    samples: Sequence[Sample], seconds: Callable[[Sample], float | None]
) -> float | None:
    """Median over the rounds of CPU µs per request, None when it was not measured."""
    values = [
        value * 1e6 / s.load.requests
        for s in samples
        if (value := seconds(s)) is not None and s.load.requests
    ]
    return statistics.median(values) if values else None


def _fmt_rps(v: float) -> str:
    return f"{v:,.0f}" if v else "-"


def _fmt_cpu(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _scenario_table(s: Scenario, rows: list[Row]) -> list[str]:
    direct = next((r for r in rows if r.kind == "direct"), None)
    out = [
        f"### {s.title}",
        "",
        "| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | user | kernel | upstream "
        "| vs direct | errors | runs (req/s) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        vs = _ratio(r.rps, direct.rps) if direct is not None and r is not direct else ""
        runs = ", ".join(f"{v / 1000:.1f}k" for v in r.rps_runs)
        name = f"**{r.target}**" if r.kind == "metaprotocol" else r.target
        if r.note:
            out.append(f"| {name} | skipped: {r.note} | | | | | | | | | |")
            continue
        out.append(
            f"| {name} | {_fmt_rps(r.rps)} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{_fmt_cpu(r.cpu_us)} | {_fmt_cpu(r.user_us)} | {_fmt_cpu(r.kernel_us)} | "
            f"{_fmt_cpu(r.upstream_us)} | {vs} | {r.errors} | {runs} |"
        )
    peers = [r for p in s.peers for r in rows if r.target == p and r.rps]
    ours = [r for r in rows if r.kind == "metaprotocol" and r.rps]
    if peers and ours:
        out += ["", "Ratios, metaprotocol ÷ peer: throughput (CPU per request).", ""]
        out.append("| metaprotocol | " + " | ".join(f"vs {p.target}" for p in peers) + " |")
        out.append("|---|" + "--:|" * len(peers))
        for r in ours:
            cells = []
            for p in peers:
                cpu = ""
                if r.cpu_us is not None and p.cpu_us:
                    cpu = f" ({r.cpu_us / p.cpu_us:.2f}x CPU)"
                cells.append(_ratio(r.rps, p.rps) + cpu)
            out.append(f"| {r.target} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _memory(results: Sequence[MemoryResult]) -> list[str]:
    if not results:
        return []
    out = [
        "## Memory",
        "",
        "RSS growth of the proxy's process group (user space only; kernel socket buffers are "
        "not in RSS). TCP-level forwarders hold an upstream connection per downstream one.",
        "",
        "| target | what | count | RSS before KiB | RSS after KiB | bytes each |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for m in results:
        out.append(
            f"| {m.target} | {m.note} | {m.connections} | {m.rss_before_kib:,} | "
            f"{m.rss_after_kib:,} | {m.bytes_per_item:,.0f} |"
        )
    return [*out, ""]


def markdown(
    header: Sequence[str],
    scenarios: Sequence[Scenario],
    rows: list[Row],
    memory: Sequence[MemoryResult],
    profile: Sequence[str],
    notes: Sequence[str],
    sections: Sequence[str] = (),
) -> str:
    """The report: ``header``, ``sections`` (the goals, then what is not a load scenario),
    each scenario's table, memory, the profile and the notes."""
    out = [*header, *sections]
    for s in scenarios:
        mine = [r for r in rows if r.scenario == s.key]
        if mine:
            out += _scenario_table(s, mine)
    out += _memory(memory)
    out += list(profile)
    if notes:
        out += ["## Notes and skipped targets", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


_COLOURS = {
    "direct": "#9e9e9e",
    "metaprotocol": "#1f77b4",
    "native": "#2ca02c",
    "python": "#ff7f0e",
}


def _memory_kind(target: str) -> str:
    if target.startswith("metaprotocol"):
        return "metaprotocol"
    return "python" if target.startswith(("rawfwd", "mitmdump")) else "native"


def chart(
    path: Path,
    scenarios: Sequence[Scenario],
    rows: list[Row],
    title: str,
    memory: Sequence[MemoryResult] = (),
) -> str | None:
    """A PNG: one horizontal bar chart of req/s per scenario, CPU µs/req as labels, and
    bytes per idle connection when memory was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install matplotlib)"
    present = [s for s in scenarios if any(r.scenario == s.key and r.rps for r in rows)]
    if not present:
        return "no results to chart"
    idle = [m for m in memory if "idle after" in m.note]
    panels = len(present) + (1 if idle else 0)
    cols = 2 if panels > 1 else 1
    nrows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 3.6 * nrows), squeeze=False)
    for ax, s in zip(axes.flat, present, strict=False):
        mine = [r for r in rows if r.scenario == s.key and r.rps]
        names = [r.target for r in mine]
        values = [r.rps for r in mine]
        ax.barh(names, values, color=[_COLOURS.get(r.kind, "#777") for r in mine])
        ax.invert_yaxis()
        ax.set_title(s.title, fontsize=10)
        ax.set_xlabel("req/s (label: proxy CPU µs per request)", fontsize=8)
        ax.tick_params(labelsize=8)
        top = max(values)
        for y, r in enumerate(mine):
            label = f" {r.rps / 1000:.1f}k"
            if r.cpu_us is not None:
                label += f"  {r.cpu_us:.1f} µs"
            ax.text(r.rps, y, label, va="center", fontsize=7)
        ax.set_xlim(0, top * 1.35)
    if idle:
        ax = list(axes.flat)[len(present)]
        kib = [m.bytes_per_item / 1024 for m in idle]
        colours = [_COLOURS[_memory_kind(m.target)] for m in idle]
        ax.barh([m.target for m in idle], kib, color=colours)
        ax.invert_yaxis()
        ax.axvline(10, color="#d62728", linestyle="--", linewidth=1)
        ax.set_title("RSS per idle connection (KiB; goal <= 10, dashed)", fontsize=10)
        ax.tick_params(labelsize=8)
        for y, v in enumerate(kib):
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=7)
        ax.set_xlim(0, max(kib) * 1.25)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    from matplotlib.patches import Rectangle

    handles = [Rectangle((0, 0), 1, 1, color=c) for c in _COLOURS.values()]
    fig.legend(
        handles,
        ["direct", "metaprotocol", "native proxy", "Python proxy / baseline"],
        loc="lower center",
        ncol=4,
        fontsize=8,
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
