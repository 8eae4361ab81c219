"""`make chaos`: kill -9 the service at random moments, many times, and count what broke.

Runs `dropflow run` against its own `prefect server`, drops jobs while killing and restarting
the service, then lets a last start finish everything and audits: lost jobs, partial results,
duplicate results, and duplicate flow runs (from the Prefect API), against the number of jobs
that were in flight at the kills (the most a kill can legitimately make run again).

`--runner deployment` runs the jobs as flow runs of the wait deployment on 2 process workers
(real PostgreSQL and `prefect server`, tests/cluster.py): a killed watcher re-attaches to its
runs, so the target there is 0 repeated flow runs.

`--standby` runs two services on the same folders and kills whichever holds them, measuring
how long the standby takes to serve (kill to its "watching" line). `--archive-elsewhere`
mounts a tmpfs (root only) for the archive, so every archive move crosses file systems.

`--kill-server` never kills the service: one `dropflow run` on the embedded default (its own
Prefect server and PostgreSQL in `data_dir`) takes `--jobs` jobs dropped every `--pace`
seconds while `--kills` (default 20) kill -9s hit, at random, the embedded server process or
the PostgreSQL postmaster. Each kill waits until a job has completed since the previous one
(then up to `--gap` seconds more), or `--recovery-timeout` seconds. It then waits for every
result (`--results-timeout`), asks the embedded API for runs still running or pending, stops the
service with SIGTERM and audits: lost jobs, partial, duplicate and error results, unfinished
runs, duplicate flow runs, and server or PostgreSQL processes left behind; it prints the time
from each kill to the next completed job (tests/chaos_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from tests.chaos_server import kill_server
from tests.cluster import Cluster
from tests.harness import (
    PrefectServer,
    ServiceProcess,
    archived_files,
    audit,
    claim_folders,
    flow_runs_per_job,
    wait_until,
)


def _logged_at(log: str, text: str) -> float:
    """The wall-clock time of the first log line with `text` (lines start HH:MM:SS.mmm)."""
    line = next(x for x in log.splitlines() if text in x)
    clock = datetime.strptime(line[:12], "%H:%M:%S.%f").time()
    return datetime.combine(datetime.now().date(), clock).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=None, help="default 50; 20 with --kill-server")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--standby", action="store_true", help="two services, kill the owner")
    parser.add_argument(
        "--archive-elsewhere", action="store_true", help="the archive on a tmpfs (needs root)"
    )
    parser.add_argument(
        "--runner",
        choices=["prefect", "deployment"],
        default="prefect",
        help="deployment: flow runs on 2 process workers (PostgreSQL, prefect server)",
    )
    parser.add_argument(
        "--kill-server",
        action="store_true",
        help="kill the embedded Prefect server and PostgreSQL, never the service",
    )
    parser.add_argument(
        "--pace", type=float, default=0.3, help="--kill-server: seconds between two drops"
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=2,
        help="--kill-server: a kill comes up to this many seconds (at random) after a job "
        "completed since the previous one; raise --pace with it, or the jobs run out meanwhile",
    )
    parser.add_argument(
        "--recovery-timeout",
        type=float,
        default=120,
        help="--kill-server: seconds a kill waits for a job to complete after the previous one",
    )
    parser.add_argument(
        "--results-timeout",
        type=float,
        default=600,
        help="--kill-server: seconds to wait for every result after the last drop",
    )
    args = parser.parse_args(argv)
    if args.kills is None:
        args.kills = 20 if args.kill_server else 50
    if args.kill_server and not 1 <= args.kills <= args.jobs // 2:
        parser.error("--kill-server needs at least 1 kill and 2 jobs per kill")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="dropflow-chaos-"))
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ.pop("PREFECT_API_URL", None)
    if args.kill_server:
        return kill_server(
            root,
            jobs=args.jobs,
            kills=args.kills,
            seed=seed,
            pace=args.pace,
            gap=args.gap,
            recovery_timeout=args.recovery_timeout,
            results_timeout=args.results_timeout,
        )
    if args.archive_elsewhere:
        (root / "archive").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "archive")], check=True)
    cluster = None
    if args.runner == "deployment":
        cluster = Cluster(root / "cluster", workers=2, limit=4).start()
        server = cluster.server
        assert server is not None
    else:
        server = PrefectServer(root / "server-home").start()
    names = [f"chaos{i:04d}.yaml" for i in range(args.jobs)]
    per_cycle = -(-args.jobs // args.kills)
    config = {
        "max_attempts": args.kills + 1,
        "rescan_interval": 1,
        "defaults": {"timeout": 1, "sleep": [0, 1.5]},
    }
    if args.runner == "deployment":
        config |= {"runner": "deployment", "max_concurrent_jobs": 200, "max_attempts": 3}
    in_flight_at_kills = 0
    dropped = 0
    t0 = time.monotonic()
    takeovers: list[float] = []

    def start(wait: bool = True) -> ServiceProcess:
        svc = ServiceProcess(root, config, api_url=server.url, prefect_home=root / "svc-home")
        return svc.start(wait=wait)

    try:
        standby = None
        if args.standby:
            svc = start()
            standby = start(wait=False)
            standby.wait_for_log("standby:")
        for kill in range(args.kills):
            if not args.standby:
                svc = start()
            for name in names[dropped : dropped + per_cycle]:
                svc.drop(name, "{}\n")
            dropped = min(dropped + per_cycle, len(names))
            time.sleep(rng.uniform(0.0, 2.5))
            in_flight_at_kills += len(claim_folders(svc.processing))
            killed_at = time.time()
            svc.kill()
            if standby is not None:
                standby.wait_for_log("watching ", 60)
                takeovers.append(_logged_at(standby.log(), "watching ") - killed_at)
                svc, standby = standby, start(wait=False)
                standby.wait_for_log("standby:")
            print(
                f"kill {kill + 1}/{args.kills}: {len(os.listdir(svc.results))} results so far"
                + (f", takeover {takeovers[-1]:.2f}s" if takeovers else ""),
                flush=True,
            )
        if standby is not None:
            standby.kill()
        else:
            svc = start()
        for name in names[dropped:]:
            svc.drop(name, "{}\n")
        wait_until(lambda: len(archived_files(svc.archive)) >= len(names), 600, 0.5)
        wait_until(lambda: not claim_folders(svc.processing), 60, 0.2)
        svc.stop()
        found = audit(root, names)
        runs = asyncio.run(flow_runs_per_job(server.url))
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            server.stop()
        if args.archive_elsewhere:
            subprocess.run(["umount", "-l", str(root / "archive")], check=False)
    without_run = sum(1 for name in names if name.removesuffix(".yaml") not in runs)
    # Every run beyond one per job; a run killed before Prefect renamed it after its job keeps
    # a generated name, so count by total, not by name.
    duplicate_runs = sum(runs.values()) - (len(names) - without_run)
    statuses = Counter(r["status"] for r in found["results"].values())
    print()
    print(f"seed {seed}, {time.monotonic() - t0:.0f}s, folder {root}")
    print(f"kills:                  {args.kills}")
    print(f"jobs:                   {len(names)} ({dict(statuses)})")
    print(f"lost:                   {len(found['lost'])}")
    print(f"partial results:        {len(found['partial'])}")
    print(f"duplicate results:      {len(found['duplicates'])}")
    print(f"leftovers:              {len(found['leftovers']) + len(found['not_archived'])}")
    print(f"flow runs:              {sum(runs.values())} ({without_run} jobs without one)")
    print(
        f"duplicate runs:         {duplicate_runs} (jobs in flight at the kills: "
        f"{in_flight_at_kills})"
    )
    if takeovers:
        print(
            f"takeover (kill to watching): p50 {statistics.median(takeovers):.2f}s, "
            f"max {max(takeovers):.2f}s over {len(takeovers)}"
        )
    ok = (
        not found["lost"]
        and not found["partial"]
        and not found["duplicates"]
        and not found["leftovers"]
        and not found["not_archived"]
        and duplicate_runs <= in_flight_at_kills
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
