"""`python -m bench.routes` (part of `make bench`): what routes cost (issue 18).

Real `dropflow run` processes, each in a folder of its own (its own `data_dir`, `PREFECT_HOME`
and server port, as `bench.startup` does), the configs taking turns A B A B in one run so that
the machine's load weighs on both alike:

1. Burst: 3 routes x 100 `sleep: 0` jobs against 1 route x 300, both written with `routes:`,
   the same `max_concurrent_jobs`. Each round starts the service, waits for the runner (the
   `runner:` line, after `watching`: the embedded server's start is not timed), runs one
   warm-up job, then drops the burst at once (spread over the routes in turn); wall: the first
   drop -> the last result (the result files' mtimes). With the shipped runner (embedded
   PostgreSQL server, `runner: prefect`), then `runner: direct` (no Prefect: the watcher's own
   cost). Target: throughput 3 routes / 1 route >= 0.95x (ratio of the median walls).
2. Backlog (`runner: direct`): 10,000 job files written before the start, in 1,000 subfolders
   of a recursive route against one plain folder; process start -> the last result, and
   `watching` -> the last result. The files' mtimes are set an hour back (`os.utime`) and
   `settle_seconds` is 0.1, so no file waits to settle. Target: tree / flat <= 1.2x.
3. inotify watches held by the service process after each backlog (`inotify wd:` lines of
   every /proc/<pid>/fdinfo entry), and this machine's `fs.inotify.max_user_watches`.

Writes the "routes" section of `bench/RESULTS.md` (`--quick`: a tenth, to
`bench/out/RESULTS-partial.md`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import ProcessTree
from bench.report import machine
from bench.sections import command_line, publish, results_path
from bench.startup import Service

__all__ = ["main"]

JOB = "timeout: 60\nsleep: 0\n"
MAX_CONCURRENT = 8
SETTLE_SECONDS = 0.1
BACKLOG_AGE = 3600.0
"""Seconds back the backlog's mtimes are set: older than any settle time."""


@dataclass
class Round:
    """One measured run of one config."""

    wall: float  # burst: first drop -> last result; backlog: process start -> last result
    cpu: float  # CPU seconds per job: the service, its children, PostgreSQL
    load: float
    watching: float = 0.0  # backlog: process start -> `watching`
    watches: int | None = None  # backlog: inotify watches of the service after it


@dataclass
class Pair:
    """Two configs measured in alternating rounds."""

    names: tuple[str, str]
    rounds: dict[str, list[Round]] = field(default_factory=dict)

    def median(self, name: str, what: str = "wall") -> float:
        return float(statistics.median(getattr(r, what) for r in self.rounds[name]))


class RouteService(Service):
    """`dropflow run` of `bench.startup`, with its wall-clock start and its inotify watches."""

    def start(self, config: dict[str, object] | None = None) -> None:
        self.started_at = time.time()
        super().start(config)

    def inotify_watches(self) -> int:
        """The `inotify wd:` lines of every file descriptor of the service process."""
        assert self.proc is not None
        count = 0
        fdinfo = Path(f"/proc/{self.proc.pid}/fdinfo")
        for entry in fdinfo.iterdir():
            try:
                text = entry.read_text()
            except OSError:
                continue
            count += sum(line.startswith("inotify wd:") for line in text.splitlines())
        return count


def _config(routes: int, runner: str, recursive: bool = False) -> dict[str, object]:
    return {
        "ui": False,
        "runner": runner,
        "max_concurrent_jobs": MAX_CONCURRENT,
        "settle_seconds": SETTLE_SECONDS,
        "routes": {f"r{i}": {"inbox": f"hot/r{i}", "recursive": recursive} for i in range(routes)},
    }


def _wait_results(paths: Sequence[Path], timeout: float = 900) -> float:
    """Wait until every path exists; return the latest mtime among them (wall clock).

    Results come about in the order the jobs were dropped: each look goes through the waiting
    ones in that order and stops at a run of missing ones, so that waiting on 10,000 files
    does not take a core from the service.
    """
    deadline = time.monotonic() + timeout
    pending = list(paths)
    while pending:
        missing = 0
        left = []
        for index, path in enumerate(pending):
            if path.exists():
                continue
            left.append(path)
            missing += 1
            if missing >= 20:
                left.extend(pending[index + 1 :])
                break
        pending = left
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} results missing after {timeout}s")
            time.sleep(0.05)
    last = 0.0
    for path in paths:
        if "status: completed" not in path.read_text():
            raise RuntimeError(f"{path}: {path.read_text()[:300]}")
        last = max(last, path.stat().st_mtime)
    return last


def _cpu(svc: RouteService) -> float:
    return sum(svc.cpu())


def _burst(svc: RouteService, routes: int, per_route: int, tag: str) -> Round:
    """Start the service, wait for its runner and a warm-up job, drop the burst, stop."""
    svc.start()
    try:
        svc.wait_log("runner: ")
        warm = [f"warm-{tag}.yaml"]
        svc.inbox = svc.root / "hot" / "r0"
        svc.drop(warm, JOB)
        _wait_results([svc.root / "results" / "r0" / f"warm-{tag}.result.yaml"])
        jobs = [(f"r{r}", f"{tag}-{i:04d}.yaml") for i in range(per_route) for r in range(routes)]
        load = os.getloadavg()[0]
        before = _cpu(svc)
        t0 = time.time()
        for route, name in jobs:
            svc.inbox = svc.root / "hot" / route
            svc.drop([name], JOB)
        last = _wait_results(
            [svc.root / "results" / route / (Path(n).stem + ".result.yaml") for route, n in jobs]
        )
        cpu = (_cpu(svc) - before) / len(jobs)
    finally:
        svc.stop()
    return Round(last - t0, cpu, load)


def burst_pair(work: Path, runner: str, rounds: int, jobs: int) -> Pair:
    """3 routes x jobs/3 against 1 route x jobs, alternating A B A B, `rounds` each."""
    names = ("3 routes", "1 route")
    shape = {"3 routes": (3, jobs // 3), "1 route": (1, jobs)}
    pair = Pair(names, {n: [] for n in names})
    services = {
        n: RouteService(work / f"{runner}-{shape[n][0]}", {}, _config(shape[n][0], runner))
        for n in names
    }
    for r in range(rounds):
        for name in names:
            routes, per_route = shape[name]
            one = _burst(services[name], routes, per_route, f"b{r}")
            pair.rounds[name].append(one)
            print(
                f"   {runner} round {r} {name}: {one.wall:.2f} s, {one.cpu:.4f} s CPU/job, "
                f"load {one.load:.1f}",
                flush=True,
            )
    return pair


def _write_backlog(inbox: Path, count: int, folders: int) -> list[Path]:
    """`count` job files, in `folders` subfolders (0: directly in `inbox`), oldest first."""
    base = time.time() - BACKLOG_AGE
    paths = []
    inbox.mkdir(parents=True)
    for i in range(count):
        folder = inbox / f"d{i % folders:04d}" if folders else inbox
        if i < folders:
            folder.mkdir()
        path = folder / f"j{i:05d}.yaml"
        path.write_text(JOB)
        os.utime(path, (base + i * 0.001, base + i * 0.001))
        paths.append(path)
    return paths


def _backlog(work: Path, count: int, folders: int, tag: str) -> Round:
    root = work / f"backlog-{tag}"
    svc = RouteService(root, {}, _config(1, "direct", recursive=folders > 0))
    inbox = root / "hot" / "r0"
    jobs = _write_backlog(inbox, count, folders)
    results = [
        root / "results" / "r0" / p.relative_to(inbox).with_suffix(".result.yaml") for p in jobs
    ]
    load = os.getloadavg()[0]
    svc.start()
    try:
        watching = svc.wait_log("watching ")
        last = _wait_results(results)
        assert svc.proc is not None
        cpu = sum(ProcessTree(svc.proc.pid).cpu_seconds()) / count
        watches = svc.inotify_watches()
    finally:
        svc.stop()
    shutil.rmtree(root, ignore_errors=True)
    return Round(last - svc.started_at, cpu, load, watching, watches)


def backlog_pair(work: Path, rounds: int, count: int, folders: int) -> Pair:
    names = (f"tree ({folders} subfolders, recursive)", "flat (one folder)")
    pair = Pair(names, {n: [] for n in names})
    for r in range(rounds):
        for name, sub in zip(names, (folders, 0), strict=True):
            one = _backlog(work, count, sub, f"{r}-{sub}")
            pair.rounds[name].append(one)
            print(
                f"   backlog round {r} {name}: start -> last result {one.wall:.2f} s, "
                f"-> watching {one.watching:.2f} s, {one.watches} inotify watches, "
                f"{one.cpu * 1000:.2f} ms CPU/job, load {one.load:.1f}",
                flush=True,
            )
    return pair


def _walls(rounds: Sequence[Round], what: str = "wall") -> str:
    return ", ".join(f"{getattr(r, what):.2f}" for r in rounds)


def _render_burst(pair: Pair, runner: str, jobs: int) -> list[str]:
    a, b = pair.names
    ratio = pair.median(b) / pair.median(a)
    lines = [
        f"| {runner} | {name} | {_walls(pair.rounds[name])} | {pair.median(name):.2f} "
        f"| {jobs / pair.median(name):.1f} | {pair.median(name, 'cpu'):.4f} "
        f"| {', '.join(f'{r.load:.1f}' for r in pair.rounds[name])} |"
        for name in pair.names
    ]
    per_round = ", ".join(
        f"{y.wall / x.wall:.2f}x" for x, y in zip(pair.rounds[a], pair.rounds[b], strict=True)
    )
    verdict = "met" if ratio >= 0.95 else "MISSED"
    return [
        *lines,
        f"| {runner} | **3 routes / 1 route** | per round: {per_round} | "
        f"**{ratio:.2f}x** throughput ({verdict}, target >= 0.95x) | | | |",
    ]


def render(
    shipped: Pair | None,
    direct: Pair | None,
    backlog: Pair | None,
    info: dict[str, str],
    command: str,
    elapsed: float,
    jobs: int,
    count: int,
    folders: int,
) -> str:
    lines = [
        "## Routes: 3 routes against 1, a backlog in subfolders, inotify watches",
        "",
        f"Written by `make bench` (`{command}`, {elapsed / 60:.1f} min); do not edit by hand.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['platform']}",
        f"- versions: Python {info['python']}, prefect {info['prefect']}, "
        f"watchdog {info['watchdog']}",
        f"- load average (1/5/15 min): {info['load']} before, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after; the machine may be shared, so "
        "compare rows of one run, not runs",
        "",
        f"### Burst: 3 routes x {jobs // 3} against 1 route x {jobs} `sleep: 0` jobs",
        "",
        "Each `dropflow run` has a folder of its own (its own `data_dir`, PREFECT_HOME and "
        "server port); both configs are written with `routes:` (`r0`, `r1`, `r2` or `r0` "
        f"alone), `max_concurrent_jobs: {MAX_CONCURRENT}`, no per-route cap. The configs take "
        "turns (A B A B ...); each round starts the service, waits for its runner (the "
        "`runner:` line, which follows `watching`), runs one warm-up job, then drops the burst "
        "at once, the routes in turn. Wall: the first drop -> the last result file's mtime. "
        "CPU per job: the service, its children (the embedded server) and PostgreSQL's own "
        "processes. `direct`: the same without Prefect, the watcher's own cost.",
        "",
        "| runner | config | walls s | median s | jobs/s | CPU s/job (median) | load at start |",
        "|---|---|---|---|---|---|---|",
    ]
    if shipped is not None:
        lines += _render_burst(shipped, "prefect (embedded, shipped)", jobs)
    if direct is not None:
        lines += _render_burst(direct, "direct", jobs)
    if backlog is not None:
        tree, flat = backlog.names
        ratio = backlog.median(tree) / backlog.median(flat)
        ratio_w = (backlog.median(tree) - backlog.median(tree, "watching")) / (
            backlog.median(flat) - backlog.median(flat, "watching")
        )
        verdict = "met" if ratio <= 1.2 else "MISSED"
        lines += [
            "",
            f"### Backlog: {count:,} files in {folders:,} subfolders against {count:,} in one "
            "folder (`runner: direct`)",
            "",
            "The files are written before the start, their mtimes set an hour back "
            f"(`os.utime`), `settle_seconds: {SETTLE_SECONDS:g}`, so that no file waits to "
            "settle: the time is the watcher's (scan, claim, result, archive). The tree is one "
            f"`recursive: true` route, {count // max(folders, 1)} files per subfolder; the flat "
            f"one a plain route. Alternating rounds; `max_concurrent_jobs: {MAX_CONCURRENT}`. "
            "Times from the process start (fork) to the last result file's mtime.",
            "",
            "| inbox | start -> last result s | median s | start -> `watching` s "
            "| `watching` -> last result s (median) | CPU ms/job (median) "
            "| inotify watches after it |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in backlog.names:
            rounds = backlog.rounds[name]
            after = statistics.median(r.wall - r.watching for r in rounds)
            lines.append(
                f"| {name} | {_walls(rounds)} | {backlog.median(name):.2f} "
                f"| {_walls(rounds, 'watching')} | {after:.2f} "
                f"| {backlog.median(name, 'cpu') * 1000:.2f} "
                f"| {', '.join(str(r.watches) for r in rounds)} |"
            )
        lines += [
            "",
            f"- tree / flat, median start -> last result: **{ratio:.2f}x** ({verdict}, target "
            f"<= 1.2x); `watching` -> last result: {ratio_w:.2f}x.",
        ]
    lines += [
        f"- inotify: the watches are those of the service process (every `inotify wd:` line "
        f"in /proc/<pid>/fdinfo/*), counted after its backlog was done; this machine's "
        f"`fs.inotify.max_user_watches` is {_sysctl('max_user_watches')} (per user, shared by "
        f"every process of that user), `max_user_instances` {_sysctl('max_user_instances')}.",
    ]
    return "\n".join(lines) + "\n"


def _sysctl(name: str) -> str:
    try:
        return f"{int(Path('/proc/sys/fs/inotify', name).read_text()):,}"
    except (OSError, ValueError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of each workload")
    parser.add_argument("--rounds", type=int, default=3, help="burst rounds per config")
    parser.add_argument("--backlog-rounds", type=int, default=2, help="backlog rounds per inbox")
    parser.add_argument(
        "--parts",
        default="prefect,direct,backlog",
        help="comma-separated: prefect, direct, backlog",
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    scale = 10 if args.quick else 1
    jobs, count, folders = 300 // scale, 10_000 // scale, 1_000 // scale
    info = machine()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dropflow-bench-routes-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as a user of its own when we are root
    shipped = direct = backlog = None
    try:
        if "prefect" in parts:
            print("== burst, runner: prefect (embedded)", flush=True)
            shipped = burst_pair(work, "prefect", args.rounds, jobs)
        if "direct" in parts:
            print("== burst, runner: direct", flush=True)
            direct = burst_pair(work, "direct", args.rounds, jobs)
        if "backlog" in parts:
            print("== backlog, runner: direct", flush=True)
            backlog = backlog_pair(work, args.backlog_rounds, count, folders)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    partial = args.quick or parts != {"prefect", "direct", "backlog"}
    text = render(
        shipped,
        direct,
        backlog,
        info,
        command_line("python -m bench.routes", argv),
        time.monotonic() - started,
        jobs,
        count,
        folders,
    )
    publish(results_path(partial), "routes", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
