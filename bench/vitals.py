"""`python -m bench.vitals` (part of `make bench`): what telling the outside costs (issue 20).

The shipped stack (`runner: prefect`, embedded PostgreSQL server, no UI), one `dropflow run`
per config, the configs taking turns A B C D in each round so that the machine's load weighs on
all alike:

- none: `events: false`, no `metrics_port`;
- metrics: `metrics_port` set, `/metrics` read once a second meanwhile (a busy Prometheus);
- events: `events: true` (the default), each job's three Prefect events;
- both.

Each round starts the service, waits for its runner and a warm-up job, drops `JOBS` `sleep: 0`
jobs at once and waits for their results. CPU per job: the service, its children (the server)
and the PostgreSQL cluster, from the first drop to the last result plus `SETTLE` seconds (the
server stores events in batches). Target: metrics and events together <= 5 % more CPU per job
than none (the median, over the rounds, of both / none within a round: a round runs every
config within minutes, while the load of a shared machine drifts between rounds).

The burst's rounds differ by up to 15 % on a shared 2-core machine, more than events cost: so
the events' own cost is also measured alone, per event (`per_event`): the embedded server is
started by itself, `EVENTS` events (received, started, completed in turn) are sent through
`watcher.service.events.JobEvents`, and the CPU of the sender, the server and PostgreSQL is read
once the server has stored them (`SETTLE` s later), less the server's idle CPU over as long.

Writes the "vitals" section of `bench/RESULTS.md` (`--quick`: a tenth, to
`bench/out/RESULTS-partial.md`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench.peers import free_port
from bench.report import machine
from bench.sections import command_line, publish, results_path
from bench.startup import Service

__all__ = ["main"]

JOBS = 200
JOB = "timeout: 60\nsleep: 0\n"
SETTLE = 6.0
"""Seconds after the last result before the CPU is read: the server stores events every few
seconds, work the jobs caused."""
SCRAPE_INTERVAL = 1.0
EVENTS = 3000

CONFIGS: dict[str, dict[str, object]] = {
    "none": {"events": False},
    "metrics": {"events": False, "metrics_port": 0},
    "events": {"events": True},
    "both": {"events": True, "metrics_port": 0},
}


class _Scraper:
    """Reads `/metrics` every `SCRAPE_INTERVAL` seconds until stopped."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.done = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(SCRAPE_INTERVAL):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.scrapes += 1
            except OSError:
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _round(
    svc: Service, config: dict[str, object], jobs: int, tag: str
) -> tuple[float, float, float]:
    """CPU seconds per job of one burst: the service, the server, PostgreSQL."""
    config = dict(config)
    if "metrics_port" in config:
        config["metrics_port"] = free_port()
    svc.start(config)
    scraper = None
    try:
        svc.wait_log("runner: ")
        svc.drop([f"warm-{tag}.yaml"], JOB)
        svc.wait_results([f"warm-{tag}.yaml"])
        if "metrics_port" in config:
            scraper = _Scraper(int(str(config["metrics_port"])))
        names = [f"{tag}-{i:04d}.yaml" for i in range(jobs)]
        before = svc.cpu()
        svc.drop(names, JOB)
        svc.wait_results(names)
        time.sleep(SETTLE)
        cpu = tuple((after - then) / jobs for after, then in zip(svc.cpu(), before, strict=True))
        if scraper is not None:
            assert scraper.scrapes > 0, "no /metrics answered"
    finally:
        if scraper is not None:
            scraper.stop()
        svc.stop()
    service, server, cluster = cpu
    return service, server, cluster


def per_event(work: Path, count: int) -> tuple[float, float, float]:
    """CPU seconds per event: the sender (this process), the server, PostgreSQL."""
    from bench.measure import ProcessTree
    from watcher.server.embedded import EmbeddedOptions, EmbeddedServer
    from watcher.server.settings import embedded_environment

    data = work / "per-event"
    server = EmbeddedServer(
        EmbeddedOptions(free_port(), data, ui=False, history_days=0),
        {**os.environ, **embedded_environment(os.environ)},
    )
    url = server.start()

    def stack() -> tuple[float, float]:
        # The server is this process's only child; PostgreSQL daemonizes.
        pid = int((data / "postgres" / "postmaster.pid").read_text().split()[0])
        return ProcessTree(os.getpid()).cpu_seconds()[1], sum(ProcessTree(pid).cpu_seconds())

    try:
        asyncio.run(_send(url, 30, "warm"))
        time.sleep(SETTLE)
        idle0 = stack()
        time.sleep(SETTLE)
        idle1 = stack()
        idle = [(b - a) / SETTLE for a, b in zip(idle0, idle1, strict=True)]
        before, t0, c0 = stack(), time.monotonic(), time.process_time()
        asyncio.run(_send(url, count, "e"))
        sender = time.process_time() - c0
        time.sleep(SETTLE)
        after, spent = stack(), time.monotonic() - t0
        server_cpu, cluster = (
            (b - a - rate * spent) / count for a, b, rate in zip(before, after, idle, strict=True)
        )
    finally:
        server.stop()
    return sender / count, server_cpu, cluster


async def _send(url: str, count: int, tag: str) -> None:
    from watcher.service.events import JobEvents
    from watcher.service.vitals import JobSeen

    events = JobEvents(buffer=count)
    events.start(url)
    result = {"status": "completed", "message": "ok", "flow": "wait", "attempt": 1}
    for i in range(count):
        job = JobSeen("default", f"{tag}-{i // 3}", f"{tag}-{i // 3}.yaml", "x.yaml", time.time())
        if i % 3 == 0:
            events.received(job)
        elif i % 3 == 1:
            events.started(job, "wait")
        else:
            events.finished(job, result)
    await events.aclose(timeout=600)
    if events.sent != count:
        raise RuntimeError(f"{events.sent} of {count} events sent")


def _median(rounds: list[tuple[float, float, float]], part: int | None = None) -> float:
    return statistics.median(sum(r) if part is None else r[part] for r in rounds)


def _paired(rounds: dict[str, list[tuple[float, float, float]]], name: str) -> list[float]:
    """`name`'s CPU per job over none's, round by round: each round ran every config in turn,
    so a pair shares the machine's load of its minutes, which drifts between rounds."""
    return [sum(a) / sum(b) for a, b in zip(rounds[name], rounds["none"], strict=True)]


def render(
    rounds: dict[str, list[tuple[float, float, float]]],
    info: dict[str, str],
    command: str,
    elapsed: float,
    jobs: int,
    alone: tuple[float, float, float] | None = None,
    sent: int = EVENTS,
) -> str:
    none = _median(rounds["none"])
    lines = [
        "## vitals: the cost of metrics and events (issue 20)",
        "",
        f"`{command}`, {info['date']}, {info['cores']} cores ({info['cpu']}), prefect "
        f"{info['prefect']}, load at start {info['load']}; {elapsed / 60:.0f} min. "
        f"{jobs} `sleep: 0` jobs at once per round on the shipped stack (embedded PostgreSQL "
        f"server, `runner: prefect`), configs in turn in each round; CPU of the service, the "
        f"server and PostgreSQL per job, from the first drop to {SETTLE:g} s after the last "
        f"result; metrics: `/metrics` read every {SCRAPE_INTERVAL:g} s meanwhile.",
        "",
        "| config | CPU ms/job, each round | median | vs none | vs none, round by round "
        "(median) | service | server | PostgreSQL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, values in rounds.items():
        median = _median(values)
        each = ", ".join(f"{sum(v) * 1000:.1f}" for v in values)
        parts = " | ".join(f"{_median(values, i) * 1000:.1f}" for i in range(3))
        paired = _paired(rounds, name)
        pairs = ", ".join(f"{(r - 1) * 100:+.1f}" for r in paired)
        lines.append(
            f"| {name} | {each} | {median * 1000:.1f} | {(median / none - 1) * 100:+.1f} % "
            f"| {pairs} ({(statistics.median(paired) - 1) * 100:+.1f} %) | {parts} |"
        )
    both = statistics.median(_paired(rounds, "both")) - 1
    verdict = "met" if both <= 0.05 else "NOT met"
    lines += [
        "",
        f"- metrics and events together: **{both * 100:+.1f} %** CPU per job ({verdict}, "
        "target <= +5 %): the median of the rounds' pairs (both against none, run one after "
        "the other in the same round); the ratio of the configs' medians is "
        f"{(_median(rounds['both']) / none - 1) * 100:+.1f} %.",
    ]
    if alone is not None:
        job = 3 * sum(alone)
        lines += [
            f"- Events alone, {sent} sent to an embedded server: per event, the sender "
            f"{alone[0] * 1000:.2f} ms, the server {alone[1] * 1000:.2f} ms, PostgreSQL "
            f"{alone[2] * 1000:.2f} ms of CPU (its idle CPU taken out); three a job: "
            f"**{job * 1000:.1f} ms, {job / none * 100:.1f} %** of the median CPU per job with "
            f"none, {3 * alone[0] / _median(rounds['none'], 0) * 100:.1f} % of the service's own.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vitals", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs, one round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    jobs = JOBS // 10 if args.quick else JOBS
    count = 1 if args.quick else args.rounds
    info = machine()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dropflow-bench-vitals-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as a user of its own when we are root
    rounds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CONFIGS}
    try:
        services = {
            name: Service(work / name, {}, {"ui": False, "max_concurrent_jobs": 8})
            for name in CONFIGS
        }
        print("== events alone", flush=True)
        sent = EVENTS // 10 if args.quick else EVENTS
        alone = per_event(work, sent)
        print(f"   per event: {', '.join(f'{c * 1000:.3f}' for c in alone)} ms", flush=True)
        for r in range(count):
            for name, config in CONFIGS.items():
                cpu = _round(services[name], config, jobs, f"r{r}")
                rounds[name].append(cpu)
                print(
                    f"   round {r} {name}: {sum(cpu) * 1000:.1f} ms CPU/job (service, server, "
                    f"PostgreSQL: {', '.join(f'{c * 1000:.1f}' for c in cpu)})",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(
        rounds,
        info,
        command_line("python -m bench.vitals", argv),
        time.monotonic() - started,
        jobs,
        alone,
        sent,
    )
    publish(results_path(args.quick), "vitals", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
