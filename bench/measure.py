"""CPU, memory and percentiles of a peer's process tree, read from /proc (Linux only).

A peer is one process we start plus everything it starts: Prefect's embedded server is a child
process, and the process-per-file peer starts a Python process per job. CPU is counted as
utime + stime + cutime + cstime of every live process in the tree: a child that has exited and
been waited for is already in its parent's cutime/cstime, so nothing is lost or counted twice.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ProcessTree", "RssSampler", "percentile"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text.rsplit(")", 1)[1].split()


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    return parents


class ProcessTree:
    """A process and its live descendants."""

    def __init__(self, root: int) -> None:
        self.root = root

    def pids(self) -> list[int]:
        """The root and every live descendant."""
        children: dict[int, list[int]] = {}
        for pid, ppid in _parents().items():
            children.setdefault(ppid, []).append(pid)
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, ()))
        return found

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds used so far: (the root process itself, all its descendants).

        Descendants include the children the root has waited for (its cutime and cstime).
        """
        own = children = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields is None:
                continue
            # Fields 14-17 of /proc/PID/stat: utime, stime, cutime, cstime (in ticks).
            utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
            if pid == self.root:
                own += utime + stime
                children += cutime + cstime
            else:
                children += utime + stime + cutime + cstime
        return own / _TICKS, children / _TICKS

    def rss_bytes(self) -> int:
        """Resident memory of the whole tree now."""
        total = 0
        for pid in self.pids():
            fields = _stat_fields(pid)
            if fields is not None:
                total += int(fields[21]) * _PAGE
        return total

    def peak_rss_bytes(self) -> int:
        """Sum of each live process's own high-water mark (VmHWM)."""
        total = 0
        for pid in self.pids():
            total += _vm_hwm(pid)
        return total


def _vm_hwm(pid: int) -> int:
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a tree's resident memory on a thread; `peak` is the largest sum seen.

    Sampling (every 100 ms) rather than VmHWM, because VmHWM only ever grows: it could not
    tell one workload's peak from the previous one's, and it is lost with a process that exits.
    """

    def __init__(self, tree: ProcessTree, interval: float = 0.1) -> None:
        self.tree = tree
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree.rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.tree.rss_bytes())


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    ordered: Sequence[float] = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
