"""`make soak` (`python -m bench.soak`): the embedded default, left to run at a steady rate.

A real `dropflow run` on a fresh folder and `data_dir` (the shipped PostgreSQL, `ui: true`) for
`--minutes` (60), while `--rate` (5) `sleep: 0` jobs a second are dropped the careful way (a
hidden temp file renamed into the inbox), with retention set short: `results_days` and
`archive_days` of 5 minutes (the floor lowered to 60 s by `DROPFLOW_RETENTION_FLOOR_SECONDS`),
`history_days` at its minimum (1 h: Prefect refuses a shorter flow-run retention) and Prefect's
db_vacuum every 60 s. A dropflow without the retention keys (or `--no-retention`) runs without.

Every `--every` (10) seconds a row is appended and flushed to `bench/soak.csv` (`soak_probe`);
at the end the plot goes to `bench/soak.png` and `docs/img/soak.png`, and the verdicts
(`soak_verdict`) to the "soak" section of `bench/RESULTS.md`. The end, Ctrl-C or SIGTERM all
stop the service with SIGTERM and wait for it, and write what was sampled.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType

import psutil
import yaml

from bench.peers import ROOT, free_port
from bench.report import machine
from bench.sections import command_line, publish
from bench.soak_probe import (
    Probe,
    Row,
    append_row,
    cluster_pids,
    count_files,
    database_mb,
    load_1m,
    percentile,
)
from bench.soak_verdict import plot, render

__all__ = ["main"]

BENCH = Path(__file__).resolve().parent
JOB = "timeout: 60\nsleep: 0\n"
RETENTION = {"results_days": 5 / 1440, "archive_days": 5 / 1440, "history_days": 0.0417}
ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PYTHONUNBUFFERED": "1",
    "DROPFLOW_RETENTION_FLOOR_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": "60",
}
VACUUM_LOOP_S = 60.0


class Stop(Exception):
    """SIGTERM to the soak: stop as on Ctrl-C."""


def retention_supported() -> bool:
    """Whether this dropflow's config takes `results_days` and `archive_days`."""
    from watcher.config.settings import Settings

    return {"results_days", "archive_days"} <= set(Settings.model_fields)


class Dropper:
    """Drops `rate` jobs a second on a schedule (late drops catch up), and finds their results."""

    def __init__(self, inbox: Path, results: Path, rate: float) -> None:
        self.inbox, self.results, self.rate = inbox, results, rate
        self.dropped = 0
        self.done = 0
        self._pending: dict[str, float] = {}  # result name -> drop time (epoch)
        self._latencies: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._drop, name="soak-drop", daemon=True),
            threading.Thread(target=self._collect, name="soak-collect", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def take_latencies(self) -> list[float]:
        """Drop-to-result seconds of the results found since the last call."""
        with self._lock:
            found, self._latencies = self._latencies, []
        return found

    def _drop(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            name = f"soak-{self.dropped:07d}"
            temp = self.inbox / f".{name}.yaml.part"
            temp.write_text(JOB)
            with self._lock:
                self._pending[f"{name}.result.yaml"] = time.time()
            os.rename(temp, self.inbox / f"{name}.yaml")
            self.dropped += 1
            self._stop.wait(max(0.0, started + self.dropped / self.rate - time.monotonic()))

    def _collect(self) -> None:
        # One listing a tick, not a look per pending job: a backlog of thousands would cost
        # the machine under test more than the folder, which retention keeps small.
        while not self._stop.wait(0.5):
            with self._lock:
                pending = dict(self._pending)
            with contextlib.suppress(OSError):
                with os.scandir(self.results) as entries:
                    arrived = [entry.name for entry in entries if entry.name in pending]
                for name in arrived:
                    seen = time.time()
                    with contextlib.suppress(OSError):
                        seen = _finished_at((self.results / name).read_text()) or seen
                    with self._lock:
                        del self._pending[name]
                        self._latencies.append(seen - pending[name])
                        self.done += 1


def _finished_at(text: str) -> float | None:
    with contextlib.suppress(yaml.YAMLError, ValueError, TypeError, AttributeError):
        value = yaml.safe_load(text).get("finished_at")
        return datetime.fromisoformat(str(value)).timestamp()
    return None


class Soak:
    """One `dropflow run` in `root`, sampled."""

    def __init__(self, root: Path, retention: bool) -> None:
        self.root = root
        self.data = root / "data"
        config: dict[str, object] = {"server_port": free_port(), "data_dir": "data", "ui": True}
        if retention:
            config.update(RETENTION)
        self.config = config
        self.probe = Probe()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.root / "inbox").mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text(yaml.safe_dump(self.config))
        env = {**os.environ, **ENVIRONMENT, "PREFECT_HOME": str(self.root / "prefect-home")}
        env.pop("PREFECT_API_URL", None)
        with (self.root / "service.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "watcher",
                    "run",
                    "--config",
                    str(self.root / "config.yaml"),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C reaches the soak alone, which stops it in order.
                start_new_session=os.name != "nt",
            )

    def wait_log(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        log = self.root / "service.log"
        while text not in log.read_text(errors="replace"):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in the service's log after {timeout} s")
            time.sleep(0.1)

    def server_pid(self) -> int | None:
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children():
                if any("watcher.server" in part for part in child.cmdline()):
                    return int(child.pid)
        return None

    def sample(self, elapsed: float, dropper: Dropper) -> Row:
        assert self.proc is not None
        service, server = self.proc.pid, self.server_pid()
        latencies = dropper.take_latencies()
        cluster = cluster_pids(self.data)
        return Row(
            elapsed_s=elapsed,
            rss_service_mb=self.probe.rss_mb([service]),
            rss_server_mb=None if server is None else self.probe.rss_mb([server]),
            rss_postgres_mb=self.probe.rss_mb(cluster),
            pss_postgres_mb=self.probe.pss_mb(cluster),
            fds_service=self.probe.fds(service),
            fds_server=None if server is None else self.probe.fds(server),
            inotify_watches=self.probe.inotify_watches(service),
            db_mb=database_mb(self.data),
            results_files=count_files(self.root / "results"),
            archive_files=count_files(self.root / "archive"),
            dropped=dropper.dropped,
            done=dropper.done,
            p50_s=percentile(latencies, 50),
            p99_s=percentile(latencies, 99),
            load_1m=load_1m(),
        )

    def stop(self) -> None:
        """SIGTERM the service and wait; kill its session if it hangs; check PostgreSQL went."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            print("the service did not stop in 90 s: killed", flush=True)
            if os.name != "nt":
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()
        left = cluster_pids(self.data)
        if left:
            print(f"PostgreSQL left running after the stop (pids {left})", flush=True)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    retention = not args.no_retention and retention_supported()
    if not args.no_retention and not retention:
        print("this dropflow has no results_days/archive_days: soaking without retention")
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="dropflow-soak-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as a user of its own when we are root
    soak = Soak(work, retention)
    dropper = Dropper(work / "inbox", work / "results", args.rate)
    rows: list[Row] = []
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGTERM, _raise_stop)
        # A shell starts background jobs with SIGINT ignored; `kill -INT` must still stop us.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        soak.start()
        soak.wait_log("runner: ")
        print(f"soaking in {work} for {args.minutes} min at {args.rate} jobs/s", flush=True)
        started = time.monotonic()
        end = started + args.minutes * 60
        dropper.start()
        with args.csv.open("w", newline="") as stream:
            while (now := time.monotonic()) < end:
                time.sleep(min(args.every, end - now))
                row = soak.sample(time.monotonic() - started, dropper)
                append_row(stream, row, header=not rows)
                rows.append(row)
                print(
                    f"{row.elapsed_s / 60:5.1f} min: {row.dropped} dropped, {row.done} done, "
                    f"p99 {row.p99_s if row.p99_s is not None else '-'} s",
                    flush=True,
                )
    except (KeyboardInterrupt, Stop):
        print("interrupted: stopping the service", flush=True)
    finally:
        # A second Ctrl-C must not cut the stop short and leave the service and PostgreSQL
        # running: it is ignored until the service is gone (killed after 90 s if it hangs).
        with contextlib.suppress(AttributeError, ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        dropper.stop()
        soak.stop()
        log = work / "service.log"
        if log.exists():
            kept = BENCH / "out" / "soak-service.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, kept)
            print(f"the service's log: {kept}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    if rows:
        plot(rows, [args.png, *([ROOT / "docs" / "img" / "soak.png"] if args.docs_png else [])])
        settings: dict[str, object] = {
            **{k: v for k, v in soak.config.items() if k != "server_port"},
            "rate": f"{args.rate} jobs/s of sleep: 0",
            "every": f"{args.every} s",
            **(
                {
                    k: v
                    for k, v in ENVIRONMENT.items()
                    if k.startswith(("DROPFLOW", "PREFECT_SERVER_SERVICES"))
                }
                if retention
                else {}
            ),
        }
        db_since = RETENTION["history_days"] * 86400 + 2 * VACUUM_LOOP_S
        text = render(
            rows, info, settings, command_line("python -m bench.soak", argv), retention, db_since
        )
        publish(args.results, "soak", text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=5, help="jobs dropped a second")
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--no-retention", action="store_true")
    parser.add_argument("--csv", type=Path, default=BENCH / "soak.csv")
    parser.add_argument("--png", type=Path, default=BENCH / "soak.png")
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument(
        "--no-docs-png", dest="docs_png", action="store_false", help="skip docs/img/soak.png"
    )
    args = parser.parse_args(argv)
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
