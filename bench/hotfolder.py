"""The watchdog handler the naive and process-per-file peers share: one call per job file.

It reacts to `created` (a file written in place or moved in from another folder, which is all
the seed's handler looked at) and to `moved` into a job name (the bench drops files by a
rename inside the inbox, as careful writers do, and watchdog reports that as a move).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["JobHandler", "ready", "watch_until_stopped"]


class JobHandler(FileSystemEventHandler):
    """Calls `on_job(path)` on the observer thread for each new `*.yaml` file."""

    def __init__(self, on_job: Callable[[Path], None]) -> None:
        self._on_job = on_job

    def _maybe(self, raw: bytes | str) -> None:
        path = Path(os.fsdecode(raw))
        if path.suffix == ".yaml" and not path.name.startswith("."):
            self._on_job(path)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._maybe(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._maybe(event.dest_path)


def ready() -> None:
    """Tell the bench this peer is listening (it waits for this line in the peer's log)."""
    print("READY", flush=True)
    sys.stderr.flush()


def watch_until_stopped(inbox: Path | str, on_job: Callable[[Path], None]) -> None:
    """Call `on_job` for each new job file in `inbox` until the process is interrupted."""
    observer = Observer()
    observer.schedule(JobHandler(on_job), str(inbox))
    observer.start()
    ready()
    try:
        while observer.is_alive():
            observer.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        observer.stop()
