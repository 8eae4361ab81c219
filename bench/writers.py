"""How long do writers that close and reopen a file pause in between? (`python -m bench.writers`)

Runs each writer below on a real file in a folder watched by watchdog's native observer (inotify
here), and reports the gaps between one close-after-write and the next open of the same file:
the quiet period (`watcher.defaults.QUIET_SECONDS`) must be longer than these, or the file is
taken between two of the writer's cycles. Each writer runs `--runs` times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

__all__ = ["WRITERS", "main"]

PY = sys.executable
WRITERS: dict[str, str] = {
    "bash builtins, `echo >>` x5": "echo 'timeout: 5' > f.yaml; for i in 1 2 3 4; do "
    'echo "# $i" >> f.yaml; done',
    "one external command per append, x5": "printf 'timeout: 5\\n' > f.yaml; for i in 1 2 3 4; "
    "do date '+# %s' >> f.yaml; done",
    "python, 5 open(..., 'a') in a loop": f"{PY} -c \"[open('f.yaml', 'a').write('# x\\n') "
    'for _ in range(5)]"',
    "a python start between appends, x3 (`x=$(python ...)`)": "echo 'timeout: 5' > f.yaml; "
    f'x=$({PY} -c "print(\'# a\')"); echo "$x" >> f.yaml; '
    f'x=$({PY} -c "print(\'# b\')"); echo "$x" >> f.yaml',
    "python start per append, x3 (`python >> f`: open meanwhile)": "echo 'timeout: 5' > f.yaml; "
    f"{PY} -c \"print('# a')\" >> f.yaml; {PY} -c \"print('# b')\" >> f.yaml",
    "the issue's script (`sleep 0.3` between)": "echo 'timeout: 5' > f.yaml; sleep 0.3; "
    "echo 'sleep: 0.1' >> f.yaml; sleep 0.3; echo 'name: appended' >> f.yaml",
    "`cp` of a file (one open)": "printf 'timeout: 5\\n' > ../src.yaml; cp ../src.yaml f.yaml",
}


class _Recorder(FileSystemEventHandler):
    def __init__(self, target: str) -> None:
        self.target = target
        self.events: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.src_path != self.target:
            return
        kind = (
            "open"
            if isinstance(event, FileOpenedEvent)
            else "close"
            if isinstance(event, FileClosedEvent)
            else ""
        )
        if kind:
            with self.lock:
                self.events.append((time.monotonic(), kind))


def gaps(events: list[tuple[float, str]]) -> list[float]:
    """Seconds from each close-after-write to the next open."""
    found, closed = [], None
    for at, kind in events:
        if kind == "close":
            closed = at
        elif kind == "open" and closed is not None:
            found.append(at - closed)
            closed = None
    return found


def measure(command: str, runs: int) -> tuple[int, list[float]]:
    """Run `command` `runs` times; the closes per run and every close-to-reopen gap."""
    all_gaps: list[float] = []
    closes = 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "inbox"
            folder.mkdir()
            recorder = _Recorder(str(folder / "f.yaml"))
            observer = Observer()
            observer.schedule(recorder, str(folder), recursive=False)
            observer.start()
            try:
                subprocess.run(["bash", "-c", command], cwd=folder, check=True, timeout=60)
                # Let the observer deliver the last close before counting.
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    with recorder.lock:
                        if recorder.events and recorder.events[-1][1] == "close":
                            break
                    time.sleep(0.01)
            finally:
                observer.stop()
                observer.join()
            closes = sum(1 for _, kind in recorder.events if kind == "close")
            all_gaps += gaps(recorder.events)
    return closes, all_gaps


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every writer and print a markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.writers", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="runs per writer (default 10)")
    args = parser.parse_args(argv)
    print(f"{args.runs} runs per writer; close-after-write to next open, in seconds\n")
    print("| writer | closes per run | gaps | median gap s | max gap s |")
    print("|---|---|---|---|---|")
    for label, command in WRITERS.items():
        closes, found = measure(command, args.runs)
        median = f"{statistics.median(found):.4f}" if found else "-"
        worst = f"{max(found):.4f}" if found else "-"
        print(f"| {label} | {closes} | {len(found)} | {median} | {worst} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
