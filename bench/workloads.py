"""The workloads, and running one on a peer with everything measured.

- W1: a burst of 200 `sleep: 0` jobs (throughput, per-run overhead).
- W2: the seed's experiment, 100 jobs of sleep U[0, 3] with `timeout: 2`. The sleeps are drawn
  once here (fixed seed), so every peer does exactly the same work and walls compare.
- W3r and W3i: 20 single `sleep: 0` jobs one after another, each dropped when the previous
  result is in (latency on a warm service). W3r renames each job file in (the recommended way,
  complete on arrival); W3i writes it in place, in one open/write/close, which dropflow takes
  only after the close and its quiet period (`QUIET_SECONDS`).

drop->result runs from the rename into the inbox, or the close of the file written in place (or
the line written to a floor's stdin), to the moment the result file is first seen; the results
folder is polled every 10 ms.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from bench.jobfile import JobSpec, result_name
from bench.measure import ProcessTree, RssSampler
from bench.peers import PeerProcess

__all__ = ["WORKLOADS", "ResultWatch", "Workload", "WorkloadRun", "run_workload", "warm_up"]

_POLL = 0.01  # seconds between looks at the results folder
# Seconds between a W3r/W3i result and the next drop. More than watchdog's 0.5 s move-pairing delay:
# the service's claim renames the job out of the inbox, an IN_MOVED_FROM that watchdog holds
# 0.5 s at the head of its event queue, so a file dropped sooner waits behind it (measured with
# the direct runner: 0.20 s from drop to result 0.3 s after the previous job, 0.006 s after
# 1 s). W3r/W3i measure a warm, idle service; that stall is reported apart.
_SERIAL_GAP = 0.6


@dataclass(frozen=True)
class Workload:
    """A list of jobs and how they are dropped."""

    key: str
    title: str
    jobs: tuple[JobSpec, ...]
    mode: Literal["burst", "serial"]
    in_place: bool = False  # write each job file in the inbox itself, not rename it in

    def sample(self, n: int | None) -> tuple[JobSpec, ...]:
        """At most `n` jobs, spread evenly over the list (so W2's sleeps keep their mix)."""
        if n is None or n >= len(self.jobs):
            return self.jobs
        step = len(self.jobs) / n
        return tuple(self.jobs[int(i * step)] for i in range(n))


def make_workloads(scale: float = 1.0) -> tuple[Workload, ...]:
    """W1, W2, W3r and W3i; `scale` < 1 shrinks them for a quick try."""

    def count(n: int) -> int:
        return max(2, round(n * scale))

    rng = random.Random(5)
    w2 = tuple(
        JobSpec(f"w2-{i:04d}.yaml", 2.0, round(rng.uniform(0, 3), 3)) for i in range(count(100))
    )
    return (
        Workload(
            "W1",
            "burst of 200 `sleep: 0` jobs",
            tuple(JobSpec(f"w1-{i:04d}.yaml", 2.0, 0.0) for i in range(count(200))),
            "burst",
        ),
        Workload("W2", "100 jobs, sleep U[0,3], timeout 2", w2, "burst"),
        Workload(
            "W3r",
            "20 single `sleep: 0` jobs in a row, renamed in",
            tuple(JobSpec(f"w3r-{i:04d}.yaml", 2.0, 0.0) for i in range(count(20))),
            "serial",
        ),
        Workload(
            "W3i",
            "20 single `sleep: 0` jobs in a row, written in place",
            tuple(JobSpec(f"w3i-{i:04d}.yaml", 2.0, 0.0) for i in range(count(20))),
            "serial",
            in_place=True,
        ),
    )


WORKLOADS = make_workloads()


class ResultWatch:
    """Polls a results folder on a thread and notes when each file first appears."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                names = [e.name for e in os.scandir(self.folder) if not e.name.startswith(".")]
            except FileNotFoundError:
                names = []
            for name in names:
                self.seen.setdefault(name, now)
            self._stop.wait(_POLL)

    def wait(self, names: list[str], deadline: float) -> bool:
        """Block until every name was seen (True) or `deadline` (monotonic) passes (False)."""
        while not all(name in self.seen for name in names):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()


@dataclass
class WorkloadRun:
    """What one peer did on one workload."""

    workload: Workload
    jobs: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    cpu_children: float = 0.0  # of `cpu`: the embedded server and any other child processes
    peak_rss: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    missing: int = 0
    # flow_run_id -> the flow run's start_time, read from the peer's Prefect API afterwards
    flow_starts: dict[str, datetime] = field(default_factory=dict)

    @property
    def full(self) -> int:
        """How many jobs the whole workload has."""
        return len(self.workload.jobs)

    @property
    def sampled(self) -> bool:
        """Whether this run was a sample of the workload."""
        return self.jobs < self.full

    @property
    def scaled_wall(self) -> float:
        """The wall time for the whole workload: measured, or scaled linearly from a sample."""
        return self.wall * self.full / self.jobs

    def lateness(self) -> list[float]:
        """For each canceled result: finished_at - (started_at + timeout), in seconds."""
        late = []
        for result in self.results:
            if result.get("status") == "canceled":
                started = datetime.fromisoformat(str(result["started_at"]))
                finished = datetime.fromisoformat(str(result["finished_at"]))
                late.append((finished - started).total_seconds() - float(result["timeout"]))
        return late

    def flow_lateness(self) -> list[float]:
        """For each canceled result of a known flow run: finished_at - (flow start + timeout).

        This is the issue's measure (from the flow run's start, in Prefect's own record), where
        `lateness` also counts the time Prefect took to create and start the flow run.
        """
        late = []
        for result in self.results:
            start = self.flow_starts.get(str(result.get("flow_run_id")))
            if result.get("status") == "canceled" and start is not None:
                finished = datetime.fromisoformat(str(result["finished_at"]))
                late.append((finished - start).total_seconds() - float(result["timeout"]))
        return late

    def statuses(self) -> dict[str, int]:
        """How many results had each status."""
        counts: dict[str, int] = {}
        for result in self.results:
            status = str(result.get("status", "?"))
            counts[status] = counts.get(status, 0) + 1
        return counts


def _flow_starts(api: str, ids: list[str]) -> dict[str, datetime]:
    """Each flow run's start_time, from the peer's Prefect API (after the timing is done)."""
    starts = {}
    with httpx.Client(base_url=api, timeout=10) as client:
        for flow_run_id in ids:
            response = client.get(f"/flow_runs/{flow_run_id}")
            if response.status_code == 200 and response.json().get("start_time"):
                starts[flow_run_id] = datetime.fromisoformat(response.json()["start_time"])
    return starts


def warm_up(peer: PeerProcess, watch: ResultWatch, timeout: float) -> float:
    """One untimed `sleep: 0` job (the embedded server starts lazily for some peers); return
    the seconds from the peer's start to that first result."""
    spec = JobSpec("warmup.yaml", 2.0, 0.0)
    peer.submit(spec)
    if not watch.wait([result_name(spec.name)], time.monotonic() + timeout):
        raise TimeoutError(f"{peer.peer.key}: no warm-up result after {timeout:g}s")
    return watch.seen[result_name(spec.name)] - peer.started


def run_workload(
    peer: PeerProcess, watch: ResultWatch, workload: Workload, n: int | None, timeout: float
) -> WorkloadRun:
    """Run (a sample of `n` jobs of) `workload` on a ready peer, measuring as it goes."""
    jobs = workload.sample(n)
    run = WorkloadRun(workload, len(jobs))
    assert peer.proc is not None
    tree = ProcessTree(peer.proc.pid)
    names = [result_name(spec.name) for spec in jobs]
    dropped: dict[str, float] = {}
    own_before, children_before = tree.cpu_seconds()
    deadline = time.monotonic() + timeout
    with RssSampler(tree) as rss:
        t0 = time.monotonic()
        if workload.mode == "burst":
            for spec, name in zip(jobs, names, strict=True):
                dropped[name] = peer.submit(spec, in_place=workload.in_place)
            complete = watch.wait(names, deadline)
        else:
            complete = True
            for spec, name in zip(jobs, names, strict=True):
                dropped[name] = peer.submit(spec, in_place=workload.in_place)
                if not watch.wait([name], deadline):
                    complete = False
                    break
                time.sleep(_SERIAL_GAP)
        seen = [watch.seen[name] for name in names if name in watch.seen]
        run.wall = (max(seen) if complete else time.monotonic()) - t0
    own_after, children_after = tree.cpu_seconds()
    run.cpu_children = children_after - children_before
    run.cpu = own_after - own_before + run.cpu_children
    run.peak_rss = rss.peak
    run.missing = len(names) - len(seen)
    for name in names:
        if name in watch.seen:
            run.latencies.append(watch.seen[name] - dropped[name])
            data = yaml.safe_load((peer.results / name).read_text())
            run.results.append(data if isinstance(data, dict) else {})
    api = peer.api_url()
    if api is not None:
        ids = [str(r["flow_run_id"]) for r in run.results if r.get("status") == "canceled"]
        run.flow_starts = _flow_starts(api, [i for i in ids if i != "None"])
    if workload.mode == "serial":
        # The gaps between W3r's and W3i's jobs are the bench's, not the peer's.
        run.wall -= _SERIAL_GAP * (len(jobs) - 1)
    return run
