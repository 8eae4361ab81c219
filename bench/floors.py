"""Peers 4 and 5, the floors: the same runs with no watcher, jobs read from stdin.

- `prefect`: the wait flow, called in one process exactly as dropflow's `PrefectRunner` calls
  it, with the same concurrency and the same embedded-server settings (`watcher.server.settings`).
  What Prefect itself costs.
- `direct`: `DirectRunner`, the same sleeps and timeouts with no Prefect: the physical limit.

Each stdin line is a job (`JobSpec.line`); results go to RESULTS like dropflow's.

Usage: python -m bench.floors prefect|direct RESULTS CONCURRENCY
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from pathlib import Path

from bench.hotfolder import ready
from bench.jobfile import JobSpec, RunClock, write_result
from watcher.server.embedded import EmbeddedOptions, EmbeddedServer
from watcher.server.settings import embedded_environment, service_environment

__all__ = ["embedded_options", "embedded_server", "main"]


def embedded_options() -> EmbeddedOptions:
    """The embedded server as `dropflow run` configures it, on a free port, with its history
    in `$PREFECT_HOME/../data` (the peer's own folder) and no UI."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data_dir = Path(os.environ["PREFECT_HOME"]).parent / "data"
    return EmbeddedOptions(port=port, data_dir=data_dir, ui=False, history_days=0)


def embedded_server() -> EmbeddedServer:
    """The embedded server of `embedded_options`, with the embedded settings."""
    return EmbeddedServer(embedded_options(), {**os.environ, **embedded_environment(os.environ)})


async def _serve(mode: str, results: Path, concurrency: int) -> None:
    from watcher.running.contract import Runner, RunRequest
    from watcher.running.direct import DirectRunner
    from watcher.running.in_process import PrefectRunner

    # As `dropflow run` builds it: the embedded server gets the environment with the settings.
    runner: Runner = DirectRunner()
    if mode == "prefect":
        runner = PrefectRunner(embedded_options(), dict(os.environ))
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[JobSpec | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, JobSpec.from_line(line))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def one(spec: JobSpec) -> None:
        try:
            clock = RunClock()
            request = RunRequest("-", Path(spec.name).stem, spec.timeout, spec.sleep)
            outcome = await runner.run(request)
            extra = {"flow_run_id": outcome.flow_run_id} if outcome.flow_run_id else {}
            result = clock.finish(spec, outcome.status, outcome.message, **extra)
            await asyncio.to_thread(write_result, results, result)
        finally:
            slots.release()

    print(await runner.start(), flush=True)
    try:
        threading.Thread(target=read_stdin, daemon=True).start()
        ready()
        while (spec := await queue.get()) is not None:
            await slots.acquire()
            task = asyncio.create_task(one(spec))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.wait(set(running))
    finally:
        await runner.close()


def main(argv: list[str]) -> int:
    """Run jobs from stdin until it closes."""
    mode, results, concurrency = argv[0], Path(argv[1]), int(argv[2])
    if mode not in ("prefect", "direct"):
        raise SystemExit(f"unknown floor {mode!r}")
    if mode != "direct":
        # Before Prefect is imported, as `dropflow run` does: the same embedded settings.
        os.environ.update(service_environment(os.environ))
        os.environ.update(embedded_environment(os.environ))
    results.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(mode, results, concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
