"""The cut-off of the last retention run, kept in a route's processing folder.

Retention (`results_days`) deletes the results whose file time is older than a cut-off and
records that cut-off here; `dropflow status` counts only results at or after it, so its counts
from the service's index match the files still there. One small file per route, replaced
atomically, read by anyone.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from watcher.folders.durable import fsync_dir, write_atomic

__all__ = ["PRUNED_FILE", "read_cutoff", "write_cutoff"]

PRUNED_FILE = ".dropflow-pruned.json"
"""In a route's processing folder: `{"results_before": <POSIX time>}`."""


def write_cutoff(processing: Path, results_before: float) -> None:
    """Record that every result whose file time is before `results_before` was removed."""
    data = json.dumps({"results_before": results_before}).encode()
    os.replace(write_atomic(processing, data), processing / PRUNED_FILE)
    fsync_dir(processing)


def read_cutoff(processing: Path) -> float | None:
    """The last recorded cut-off; None if retention never removed a result here (or the
    record is unreadable, which only makes `status` count more, never fewer)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        value = json.loads((processing / PRUNED_FILE).read_bytes())["results_before"]
        if isinstance(value, int | float):
            return float(value)
    return None
