"""Peer 2, the naive handler: the seed's design, kept here as the baseline.

A sync `@flow` submits a sync `@task` that does `time.sleep` and waits for it with a timeout,
written the naive Prefect 3 way, and the watchdog handler calls that flow synchronously, on
the observer thread, for each file. Prefect runs with all its defaults (an ephemeral server on
a SQLite file in PREFECT_HOME). What the seed costs, and why:

- `future.wait(timeout)` returns None in Prefect 3, so the state decides; a sleep that runs
  past the timeout is not stopped, and the flow returns only when the thread is done;
- a sync flow joins its heartbeat thread on exit (about 1 s a run);
- one file at a time, on the observer thread.

The seed drew `randint(0, 3)`; here the job file gives the seconds, so every peer does the
same work.

Usage: python -m bench.naive INBOX RESULTS ARCHIVE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prefect import flow, task

from bench.hotfolder import watch_until_stopped
from bench.jobfile import RunClock, archive, read_spec, write_result

__all__ = ["main", "seed_flow"]


@task
def work(seconds: float) -> float:
    """The seed's task: sleep in a worker thread."""
    time.sleep(seconds)
    return seconds


@flow
def seed_flow(timeout: float, sleep: float) -> str:
    """The seed's flow: submit the work, wait at most `timeout`, report what the state says."""
    future = work.submit(sleep)
    future.wait(timeout)
    return "completed" if future.state.is_completed() else "canceled"


def main(argv: list[str]) -> int:
    """Watch INBOX and run each job file through `seed_flow` on the observer thread."""
    inbox, results, done = (Path(arg) for arg in argv)
    results.mkdir(parents=True, exist_ok=True)

    def on_job(path: Path) -> None:
        spec = read_spec(path)
        clock = RunClock()
        try:
            status = seed_flow(spec.timeout, spec.sleep)
        except Exception as exc:
            status = f"error: {exc}"
        write_result(results, clock.finish(spec, status))
        archive(path, done)

    watch_until_stopped(inbox, on_job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
