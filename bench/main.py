"""Run every peer on every workload, print the tables and write bench/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.peers import PEERS, ROOT, PeerProcess
from bench.report import PeerRuns, machine, render
from bench.sections import write_section
from bench.workloads import ResultWatch, make_workloads, run_workload, warm_up
from watcher import defaults

__all__ = ["main"]

_BUDGET = 14 * 60  # seconds; the issue asks for a full run under 15 minutes
_READY_TIMEOUT = 120.0
_WORKLOAD_TIMEOUT = 240.0

NOTES = (
    "Peers run one after another on the same machine, in one run; each gets a fresh folder and "
    "a fresh PREFECT_HOME, starts, serves W1, W2, W3r and W3i in that order, and stops.",
    "Jobs are dropped the careful writer's way: a hidden temp file in the inbox, renamed to "
    "`<name>.yaml`; except in W3i, where each job file is written in the inbox itself (one "
    "open, write, close), which dropflow takes after the close and its quiet period "
    "(`QUIET_SECONDS`). The floors have no inbox: the bench writes the same job to their "
    "stdin, so their W3r and W3i are the same thing measured twice.",
    "wall: first drop to last result. jobs/s: jobs run / wall. drop->result: the rename, the "
    "close of a file written in place (or the stdin line) to the result file's first sighting "
    "(polled every 10 ms). W3r's and W3i's walls leave "
    "out the bench's 0.6 s pauses between jobs.",
    "CPU s/job: CPU seconds of the peer's whole process tree during the workload (the service "
    "or script, Prefect's embedded server, any children), divided by jobs run; in brackets the "
    "children's part (the embedded server; for process per file also the per-job processes).",
    "peak RSS: the largest sum of resident memory over the process tree, sampled every 100 ms.",
    "sample, xN: the peer is too slow for the full workload; it ran every (N)th job and its wall "
    "is scaled linearly (`~`). The naive handler runs jobs one at a time, so linear is exact up "
    "to noise; process per file starts all its processes at once, so its scaled wall is a rough "
    "lower bound of what 200 processes would cost.",
    "W2's sleeps are drawn once from U[0, 3] (seed 5), so every peer does the same work. "
    "Lateness of a canceled result, after flow start: its finished_at - (the flow run's "
    "start_time in Prefect + timeout), read from the peer's API after the workload; after "
    "pickup: finished_at - (started_at + timeout), both from the result file, where started_at "
    "is taken when the job gets a slot, before its flow run is even created. Peers without a "
    "flow run id in their results (naive, process per file, the no-Prefect ones) only have the "
    "second.",
    "Peers: naive handler = the seed (a sync flow, a sync task, `future.wait(timeout)`, called "
    "on the watchdog thread, Prefect's defaults). Process per file = a new `python` per file, "
    "not waited for (watchmedo shell-command's default), against one embedded server. Prefect "
    "floor = `PrefectRunner.run` in one process with the same concurrency and settings and no "
    "watcher. No-Prefect floor = `DirectRunner`, same sleeps and files.",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of each workload, for trying things out"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="run this fraction of each workload"
    )
    parser.add_argument(
        "--workloads",
        default="W1,W2,W3r,W3i",
        help="comma-separated workloads (default: all)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(peer.key for peer in PEERS),
        help="comma-separated peer keys (default: all): " + ", ".join(peer.key for peer in PEERS),
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the report (default: bench/RESULTS.md; bench/out/RESULTS-partial.md for part runs)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=defaults.MAX_CONCURRENT_JOBS,
        help="jobs at once for the floors (dropflow's default max_concurrent_jobs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the peers' folders and logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; return the exit status."""
    args = _parser().parse_args(argv)
    wanted = args.peers.split(",")
    peers = [peer for peer in PEERS if peer.key in wanted]
    scale = args.scale if args.scale is not None else 0.1 if args.quick else 1.0
    workloads = [w for w in make_workloads(scale) if w.key in args.workloads.split(",")]
    partial = scale != 1.0 or len(workloads) < len(make_workloads()) or len(peers) < len(PEERS)
    output = args.output or (
        ROOT / "bench" / "out" / "RESULTS-partial.md" if partial else ROOT / "bench" / "RESULTS.md"
    )
    info = machine()
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    work = Path(tempfile.mkdtemp(prefix="dropflow-bench-"))
    started = time.monotonic()
    all_runs: list[PeerRuns] = []
    try:
        for peer in peers:
            peer_runs = PeerRuns(peer)
            all_runs.append(peer_runs)
            if time.monotonic() - started > _BUDGET:
                peer_runs.error = "skipped: time budget spent"
                continue
            print(f"== {peer.label}", flush=True)
            process = PeerProcess(peer, work / peer.key, args.concurrency)
            process.start()
            watch = ResultWatch(process.results)
            try:
                process.wait_ready(_READY_TIMEOUT)
                peer_runs.warm_up = warm_up(process, watch, _READY_TIMEOUT)
                print(f"   warm-up {peer_runs.warm_up:.1f}s", flush=True)
                for workload in workloads:
                    n = peer.sample.get(workload.key)
                    if n is not None and args.quick:
                        n = max(2, n // 5)
                    run = run_workload(process, watch, workload, n, _WORKLOAD_TIMEOUT)
                    peer_runs.runs[workload.key] = run
                    print(
                        f"   {workload.key}: {run.jobs} jobs in {run.wall:.2f}s, "
                        f"cpu {run.cpu / run.jobs:.3f}s/job "
                        f"({run.cpu_children / run.jobs:.3f} children), {run.statuses()}"
                        + (f", {run.missing} MISSING" if run.missing else ""),
                        flush=True,
                    )
            except (RuntimeError, TimeoutError, OSError) as exc:
                peer_runs.error = f"failed: {str(exc).splitlines()[0]}"
                print(f"   {peer_runs.error}\n{process.log()[-2000:]}", flush=True)
            finally:
                watch.close()
                process.stop()
    finally:
        if args.keep:
            print(f"peer folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(all_runs, workloads, info, command, elapsed, load_after, NOTES)
    write_section(output, "peers", text)
    print(text)
    print(f"written to {output}")
    return 0
