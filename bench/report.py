"""The tables, the target checks and bench/RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from bench.measure import percentile
from bench.peers import Peer
from bench.workloads import Workload, WorkloadRun

__all__ = ["PeerRuns", "Target", "machine", "render", "targets"]


@dataclass
class PeerRuns:
    """Everything measured for one peer."""

    peer: Peer
    warm_up: float = math.nan
    runs: dict[str, WorkloadRun] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, with the measured value."""

    text: str
    value: str
    met: bool | None  # None: not measured


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _pair(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{max(values):+.2f} / {percentile(values, 95):+.2f}"


def _get(all_runs: Sequence[PeerRuns], key: str, workload: str) -> WorkloadRun | None:
    for peer_runs in all_runs:
        if peer_runs.peer.key == key:
            return peer_runs.runs.get(workload)
    return None


def _rate(run: WorkloadRun) -> float:
    return run.jobs / run.wall if run.wall > 0 else math.nan


def workload_table(workload: Workload, all_runs: Sequence[PeerRuns]) -> list[str]:
    """The markdown table for one workload, one row per peer."""
    base = _get(all_runs, "dropflow", workload.key)
    late_cols = workload.key == "W2"
    head = [
        "peer",
        "jobs run",
        "wall s",
        "wall vs dropflow",
        "jobs/s",
        "drop->result p50 s",
        "p95 s",
        "CPU s/job (children)",
        "peak RSS MB",
        "outcomes",
    ]
    if late_cols:
        head += [
            "canceled: late after flow start, max / p95 s",
            "within +0.3 s",
            "late after pickup, max / p95 s",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer_runs in all_runs:
        run = peer_runs.runs.get(workload.key)
        if run is None:
            why = peer_runs.error or "not run"
            lines.append(f"| {peer_runs.peer.label} | {why} |" + " |" * (len(head) - 2))
            continue
        jobs = (
            f"{run.jobs}/{run.full} (sample, x{run.full / run.jobs:g})"
            if run.sampled
            else str(run.jobs)
        )
        wall = f"~{run.scaled_wall:.2f}" if run.sampled else f"{run.wall:.2f}"
        ratio = run.scaled_wall / base.wall if base is not None and base.wall > 0 else math.nan
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(run.statuses().items()))
        if run.missing:
            outcomes += f", **{run.missing} missing**"
        row = [
            peer_runs.peer.label,
            jobs,
            wall,
            f"{_fmt(ratio)}x",
            _fmt(_rate(run), 1),
            _fmt(percentile(run.latencies, 50), 3),
            _fmt(percentile(run.latencies, 95), 3),
            f"{run.cpu / run.jobs:.3f} ({run.cpu_children / run.jobs:.3f})",
            f"{run.peak_rss / 2**20:.0f}",
            outcomes,
        ]
        if late_cols:
            flow, pickup = run.flow_lateness(), run.lateness()
            within = sum(1 for x in flow if x <= 0.3)
            row += [
                _pair(flow),
                f"{within}/{len(flow)}" if flow else "n/a",
                _pair(pickup),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


# Each target is checked for dropflow as shipped against the Prefect floor.
_SUBJECTS = (("dropflow", "floor-prefect", "as shipped"),)


def targets(all_runs: Sequence[PeerRuns]) -> list[Target]:
    """The issue's targets, checked against this run (reported, not asserted)."""
    found: list[Target] = []
    for subject, floor, how in _SUBJECTS:
        found += _targets_for(all_runs, subject, floor, how)
    return found


def _targets_for(all_runs: Sequence[PeerRuns], subject: str, floor: str, how: str) -> list[Target]:
    found: list[Target] = []
    d1, f1, n1 = (_get(all_runs, k, "W1") for k in (subject, floor, "naive"))
    d2, f2, n2 = (_get(all_runs, k, "W2") for k in (subject, floor, "naive"))
    d3 = _get(all_runs, subject, "W3r")
    if d1 is None and d2 is None and d3 is None:
        return found

    def ratio(text: str, num: float | None, den: float | None, limit: float, most: bool) -> None:
        text = f"{text} ({how})"
        if num is None or den is None or not den:
            found.append(Target(text, "not measured", None))
            return
        value = num / den
        found.append(Target(text, f"{value:.2f}x", value <= limit if most else value >= limit))

    ratio(
        "W1: dropflow throughput >= 10x naive",
        _rate(d1) if d1 else None,
        _rate(n1) if n1 else None,
        10,
        most=False,
    )
    ratio(
        "W1: dropflow wall <= 1.2x Prefect floor",
        d1.wall if d1 else None,
        f1.wall if f1 else None,
        1.2,
        most=True,
    )
    if d2 is not None:
        late = d2.flow_lateness()
        within = sum(1 for x in late if x <= 0.3)
        worst = f", worst {max(late):+.2f} s" if late else ""
        found.append(
            Target(
                f"W2: every canceled result written within timeout + 0.3 s of its flow start "
                f"({how})",
                f"{within}/{len(late)}{worst}",
                bool(late) and within == len(late),
            )
        )
    ratio(
        "W2: dropflow wall <= 1.3x Prefect floor",
        d2.wall if d2 else None,
        f2.wall if f2 else None,
        1.3,
        most=True,
    )
    ratio(
        "W2: dropflow throughput >= 10x naive",
        _rate(d2) if d2 else None,
        _rate(n2) if n2 else None,
        10,
        most=False,
    )
    if d3 is not None:
        p50 = percentile(d3.latencies, 50)
        found.append(
            Target(f"W3r: drop->result p50 <= 0.35 s ({how})", f"{p50:.3f} s", p50 <= 0.35)
        )
    if d1 is not None:
        cpu = d1.cpu / d1.jobs
        found.append(
            Target(
                f"W1: CPU per job (client + server) <= 0.15 s ({how})",
                f"{cpu:.3f} s",
                cpu <= 0.15,
            )
        )
    return found


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"


def machine() -> dict[str, str]:
    """Date, machine and versions, for the report."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = _run(["free", "-h"]).splitlines()
    return {
        "date": _run(["date"]),
        "cores": _run(["nproc"]),
        "cpu": cpu,
        "memory": " ".join(mem[1].split()[1:2]) + " total" if len(mem) > 1 else "?",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "prefect": version("prefect"),
        "watchdog": version("watchdog"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def render(
    all_runs: Sequence[PeerRuns],
    workloads: Sequence[Workload],
    info: dict[str, str],
    command: str,
    elapsed: float,
    load_after: str,
    notes: Sequence[str] = (),
) -> str:
    """The whole report, as markdown."""
    out = [
        "# dropflow bench",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['platform']}",
        f"- versions: Python {info['python']}, prefect {info['prefect']}, "
        f"watchdog {info['watchdog']}",
        f"- load average (1/5/15 min): {info['load']} before, {load_after} after; "
        "the machine is shared, so compare rows of one run, not runs",
        f"- command: `{command}` ({elapsed / 60:.1f} min)",
        "",
        "## Warm-up (excluded from the workloads)",
        "",
        "From the peer's start to the result of one `sleep: 0` job: server start, imports, "
        "first flow run.",
        "",
        "| peer | warm-up s |",
        "|---|---|",
    ]
    for peer_runs in all_runs:
        out.append(f"| {peer_runs.peer.label} | {_fmt(peer_runs.warm_up)} |")
    for workload in workloads:
        out += ["", f"## {workload.key}: {workload.title}", ""]
        out += workload_table(workload, all_runs)
    out += ["", "## Targets (reported, not asserted)", ""]
    for target in targets(all_runs):
        mark = {True: "met", False: "NOT met", None: "not measured"}[target.met]
        out.append(f"- [{'x' if target.met else ' '}] {target.text}: {target.value} ({mark})")
    out += ["", "## How to read this", ""]
    out += [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"
