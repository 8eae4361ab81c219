"""`python -m bench.flows` (part of `make bench`): registered flows other than wait.

One embedded dropflow service (the shipped defaults) with two registered flows from
`tests/userflows.py`, `nap_async` (cooperative work) and `nap_sync` (`time.sleep`, which no
thread can interrupt). Measured, with sync flows' processes forked from a server that has
Prefect imported (Linux), then spawned fresh (the fallback elsewhere, forced here with
`DROPFLOW_PORTABLE=1`):

- cancel lateness: jobs of 30 s of work with `timeout: 1`, dropped together; per job, the
  result's finished_at - (the flow run's start_time in Prefect + timeout). The issue's target
  is timeout + 0.5 s.
- cost per run: jobs of no work dropped together; first drop -> last result, and the CPU
  seconds of the service's whole process tree (server, service, flow processes) per job.

Writes the "flows" section of `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from bench.measure import ProcessTree, percentile
from bench.peers import ROOT
from bench.report import machine
from bench.sections import write_section
from bench.startup import Service

__all__ = ["main"]

FLOWS = {
    "wait": "flows.wait:wait",
    "nap_async": f"{ROOT / 'tests' / 'userflows.py'}:nap_async",
    "nap_sync": f"{ROOT / 'tests' / 'userflows.py'}:nap_sync",
}
TIMEOUT = 1.0
WORK = 30.0


@dataclass
class Lateness:
    values: list[float] = field(default_factory=list)

    def text(self) -> str:
        if not self.values:
            return "n/a"
        return (
            f"+{max(self.values):.2f} / +{percentile(self.values, 95):.2f} / "
            f"+{percentile(self.values, 50):.2f}"
        )


@dataclass
class Cost:
    jobs: int = 0
    wall: float = 0.0
    cpu: float = 0.0

    def text(self) -> str:
        return f"{self.wall:.2f} | {self.cpu / self.jobs:.3f}" if self.jobs else "n/a | n/a"


@dataclass
class Mode:
    name: str
    late: dict[str, Lateness] = field(default_factory=dict)
    cost: dict[str, Cost] = field(default_factory=dict)
    error: str = ""


def _flow_run(port: int, flow_run_id: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}/api/flow_runs/{flow_run_id}"
    with urllib.request.urlopen(url, timeout=30) as response:
        data: dict[str, object] = json.load(response)
    return data


def _when(text: object) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def _late(svc: Service, flow: str, count: int, tag: str) -> Lateness:
    names = [f"{tag}-late-{flow}-{i}.yaml" for i in range(count)]
    job = f"flow: {flow}\nparameters: {{seconds: {WORK:g}}}\ntimeout: {TIMEOUT:g}\n"
    svc.drop(names, job)
    svc.wait_results(names, timeout=300)
    late = Lateness()
    for name in names:
        result = yaml.safe_load((svc.results / (Path(name).stem + ".result.yaml")).read_text())
        if result.get("status") != "canceled":
            raise RuntimeError(f"{name}: {result.get('status')}: {result.get('message')}")
        run = _flow_run(svc.port, str(result["flow_run_id"]))
        started = _when(run["start_time"])
        late.values.append(
            (_when(result["finished_at"]) - started).total_seconds() - float(TIMEOUT)
        )
    return late


def _cost(svc: Service, flow: str, count: int, tag: str) -> Cost:
    names = [f"{tag}-cost-{flow}-{i}.yaml" for i in range(count)]
    assert svc.proc is not None
    tree = ProcessTree(svc.proc.pid)
    cpu0 = sum(tree.cpu_seconds())
    t0 = svc.drop(names, f"flow: {flow}\nparameters: {{seconds: 0}}\ntimeout: 120\n")
    t1 = svc.wait_results(names, timeout=600)
    cpu = sum(tree.cpu_seconds()) - cpu0
    for name in names:
        result = yaml.safe_load((svc.results / (Path(name).stem + ".result.yaml")).read_text())
        if result.get("status") != "completed":
            raise RuntimeError(f"{name}: {result.get('status')}: {result.get('message')}")
    return Cost(count, t1 - t0, cpu)


def run_mode(name: str, env: dict[str, str], work: Path, late: int, cost: int) -> Mode:
    mode = Mode(name)
    root = work / name.split()[0]
    root.mkdir()
    svc = Service(root, env, {"flows": FLOWS, "max_concurrent_jobs": 8})
    print(f"== {name}", flush=True)
    svc.start()
    try:
        svc.wait_log("runner: ")
        warm = ["warm-sync.yaml", "warm-async.yaml"]
        svc.drop(warm[:1], "flow: nap_sync\nparameters: {seconds: 0}\ntimeout: 120\n")
        svc.drop(warm[1:], "flow: nap_async\nparameters: {seconds: 0}\ntimeout: 120\n")
        svc.wait_results(warm)
        for flow in ("nap_async", "nap_sync"):
            mode.late[flow] = _late(svc, flow, late, "a")
            print(f"   {flow}: late {mode.late[flow].text()}", flush=True)
            mode.cost[flow] = _cost(svc, flow, cost, "a")
            print(f"   {flow}: cost {mode.cost[flow].text()}", flush=True)
    except (RuntimeError, TimeoutError, OSError) as exc:
        mode.error = str(exc).splitlines()[0]
        print(f"   failed: {mode.error}\n{svc.log_path.read_text()[-3000:]}", flush=True)
    finally:
        svc.stop()
    return mode


def render(
    modes: Sequence[Mode], info: dict[str, str], command: str, elapsed: float, late: int, cost: int
) -> str:
    lines = [
        "## Registered flows: cancel lateness and cost per run",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['platform']}",
        f"- versions: Python {info['python']}, prefect {info['prefect']}, "
        f"watchdog {info['watchdog']}",
        f"- load average before: {info['load']}",
        f"- command: `{command}` ({elapsed / 60:.1f} min); load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "",
        f"Cancel lateness: {late} jobs of {WORK:g} s of work with `timeout: {TIMEOUT:g}`, "
        "dropped together; the result's finished_at - (the flow run's start_time in Prefect "
        "+ timeout). Target: at most +0.5 s. Cost: "
        f"{cost} jobs of no work dropped together; first drop -> last result, and CPU seconds "
        "of the service's process tree (embedded server, service, flow processes) per job.",
        "",
        "| flow | sync processes | canceled: late max / p95 / p50 s | within +0.5 s | "
        f"{cost} jobs wall s | CPU s/job |",
        "|---|---|---|---|---|---|",
    ]
    for mode in modes:
        if mode.error:
            lines.append(f"| all | {mode.name} | failed: {mode.error} | | | |")
            continue
        for flow in ("nap_async", "nap_sync"):
            if flow == "nap_async" and mode is not modes[0]:
                continue  # an async flow never starts a process: one row is enough
            late_values = mode.late[flow].values
            within = sum(1 for v in late_values if v <= 0.5)
            how = "(none: in the service)" if flow == "nap_async" else mode.name
            lines.append(
                f"| {flow} | {how} | {mode.late[flow].text()} | {within}/{len(late_values)} | "
                f"{mode.cost[flow].text()} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flows", description=__doc__)
    parser.add_argument("--late", type=int, default=8, help="timed-out jobs per flow")
    parser.add_argument("--cost", type=int, default=20, help="no-work jobs per flow")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="dropflow-bench-flows-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as a user of its own when we are root
    started = time.monotonic()
    try:
        modes = [
            run_mode("forked from a fork server", {}, work, args.late, args.cost),
            run_mode(
                "spawned (DROPFLOW_PORTABLE=1)",
                {"DROPFLOW_PORTABLE": "1"},
                work,
                args.late,
                args.cost,
            ),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python -m bench.flows " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(modes, info, command.strip(), time.monotonic() - started, args.late, args.cost)
    write_section(args.output, "flows", text)
    print(text)
    return 1 if any(mode.error for mode in modes) else 0


if __name__ == "__main__":
    sys.exit(main())
