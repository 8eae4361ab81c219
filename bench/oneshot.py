"""One job in a fresh Python process: the child the process-per-file peer starts per file.

Runs flows/wait.py's `wait` against the API in PREFECT_API_URL, writes the result, archives the
job file, exits. Everything a long-running service would set up once (the interpreter, Prefect's
imports, a client and its SSL context) is paid again here for every file.

Usage: python -m bench.oneshot JOB RESULTS ARCHIVE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from watcher.running.contract import RunOutcome, RunRequest
from watcher.running.in_process import PrefectRunner

__all__ = ["main"]


async def _run(request: RunRequest) -> RunOutcome:
    runner = PrefectRunner()  # PREFECT_API_URL is set: no server of its own
    try:
        return await runner.run(request)
    finally:
        await runner.close()  # send this run's logs and events before the process exits


def main(argv: list[str]) -> int:
    """Run the job file `argv[0]` once."""
    job, results, done = (Path(arg) for arg in argv)
    from bench.jobfile import RunClock, archive, read_spec, write_result

    spec = read_spec(job)
    clock = RunClock()
    request = RunRequest("-", job.stem, spec.timeout, spec.sleep)
    outcome = asyncio.run(_run(request))
    write_result(results, clock.finish(spec, outcome.status, outcome.message))
    archive(job, done)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
