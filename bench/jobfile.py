"""Job files in, result files out, for the peers the bench brings along (not dropflow itself).

Results are written the way dropflow writes them (`watcher.folders.results`: fsynced temp
file, then a rename), with the same fields the bench reads, so every peer pays the same for
its files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watcher.folders.durable import write_atomic
from watcher.folders.results import Result, dump, now_iso

__all__ = ["JobSpec", "RunClock", "archive", "read_spec", "result_name", "write_result"]


@dataclass(frozen=True)
class JobSpec:
    """One job: its file name and what it asks for."""

    name: str
    timeout: float
    sleep: float

    def yaml(self) -> str:
        """The job file's text."""
        return f"timeout: {self.timeout:g}\nsleep: {self.sleep:g}\n"

    def line(self) -> str:
        """The job as one line, for the floors, which read jobs from stdin (no files)."""
        return f"{self.name}\t{self.timeout!r}\t{self.sleep!r}\n"

    @classmethod
    def from_line(cls, line: str) -> JobSpec:
        """Parse `line`'s output back."""
        name, timeout, sleep = line.rstrip("\n").split("\t")
        return cls(name, float(timeout), float(sleep))


def read_spec(path: Path) -> JobSpec:
    """Read a job file the simple way (the bench wrote it; no hostile input here)."""
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return JobSpec(path.name, float(data.get("timeout", 2.0)), float(data.get("sleep", 0.0)))


def result_name(job_name: str) -> str:
    """`<stem>.result.yaml`, as dropflow names a first result."""
    return f"{Path(job_name).stem}.result.yaml"


class RunClock:
    """started_at / finished_at / duration_s of one run, in dropflow's format."""

    def __init__(self) -> None:
        self.started_at = now_iso()
        self._t0 = time.monotonic()

    def finish(self, spec: JobSpec, status: str, message: str = "", **extra: Any) -> Result:
        """The result mapping for a run that ended now."""
        result: dict[str, Any] = {
            "job": spec.name,
            "status": status,
            "message": message,
            "claim_id": "-",
            "attempt": 1,
            "sleep": spec.sleep,
            "timeout": spec.timeout,
            "started_at": self.started_at,
            "finished_at": now_iso(),
            "duration_s": round(time.monotonic() - self._t0, 3),
            **extra,
        }
        return result  # type: ignore[return-value]


def write_result(results: Path, result: Result) -> Path:
    """Publish `result` as `<stem>.result.yaml` in `results`, atomically."""
    target = results / result_name(result["job"])
    os.replace(write_atomic(results, dump(result)), target)
    return target


def archive(job: Path, folder: Path) -> None:
    """Move a finished job file out of the inbox, as dropflow does."""
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(job, folder / job.name)
