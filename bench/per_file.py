"""Peer 3, process per file: like `watchmedo shell-command`, a new Python process per file.

watchmedo starts the command for each event and, without `--wait`, does not wait for it, so
jobs run at once in as many processes as files arrive. A child with no PREFECT_API_URL would
start an ephemeral server of its own for each file; instead this watcher starts the embedded
server once (with dropflow's settings, `watcher.server.settings`) and hands its address to every
child, so the row measures the process-per-file pattern and not twenty servers.

Usage: python -m bench.per_file INBOX RESULTS ARCHIVE
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from bench.floors import embedded_server
from bench.hotfolder import watch_until_stopped

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Watch INBOX; start `python -m bench.oneshot` for each job file, without waiting."""
    inbox, results, done = argv
    server = embedded_server()
    child_env = {**os.environ, "PREFECT_API_URL": server.start()}
    children: list[subprocess.Popen[bytes]] = []
    lock = threading.Lock()

    def on_job(path: Path) -> None:
        command = [sys.executable, "-m", "bench.oneshot", str(path), results, done]
        with lock:
            children.append(subprocess.Popen(command, env=child_env))

    def reap() -> None:
        # Waiting for each child puts its CPU time in our cutime, where the bench counts it.
        while True:
            with lock:
                running = [child for child in children if child.poll() is None]
                children[:] = running
            threading.Event().wait(0.05)

    threading.Thread(target=reap, daemon=True).start()
    try:
        watch_until_stopped(inbox, on_job)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
