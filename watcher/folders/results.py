"""Result files: what became of a job, written durably and never seen half-written.

A job's result is `<results>/<job stem>.result.yaml`. A later job whose file has the same name
is a new job and gets the next free name, `<stem>.result.2.yaml`, `<stem>.result.3.yaml`, ...:
no result is ever overwritten or mixed with another. Each result records the `claim_id` of the
job it belongs to, which is how a restarted service knows a result was already published.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypedDict

import yaml

from watcher import features
from watcher.folders.durable import NO_LINK, copy_into, fsync_dir, place
from watcher.jobs.names import cut_stem

__all__ = [
    "Result",
    "Status",
    "publish",
    "read_result",
    "result_names",
]

logger = logging.getLogger(__name__)

Status = Literal["completed", "canceled", "error"]


class _ResultRequired(TypedDict):
    job: str
    status: Status
    message: str
    claim_id: str
    attempt: int


class Result(_ResultRequired, total=False):
    """The fields of a result file (docs/jobs.md describes each)."""

    route: str
    subfolder: str
    flow: str
    name: str
    sleep: float
    timeout: float
    started_at: str
    finished_at: str
    duration_s: float
    flow_run_id: str
    flow_run_name: str
    flow_run_url: str
    submission: str
    retry_of: str
    work_pool: str
    worker: str
    return_value: Any
    return_note: str


def now_iso() -> str:
    """The current time, ISO 8601 with the local time zone."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def dump(result: Result) -> bytes:
    """The YAML text of a result, keys in a fixed, readable order."""
    return yaml.safe_dump(
        dict(result), sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000
    ).encode("utf-8")


def _safe_stem(job_name: str) -> str:
    stem = Path(job_name).stem if Path(job_name).suffix else job_name
    stem = stem.replace("/", "_").replace("\\", "_").replace("\x00", "_") or "job"
    return cut_stem(stem)


def result_names(job_name: str) -> Iterator[str]:
    """The names a job's result may take, in the order they are tried."""
    stem = _safe_stem(job_name)
    yield f"{stem}.result.yaml"
    n = 2
    while True:
        yield f"{stem}.result.{n}.yaml"
        n += 1


def read_result(path: Path) -> dict[str, Any] | None:
    """A result file's mapping, or None if it is missing or not ours."""
    try:
        with open(path, "rb") as handle:
            data = yaml.safe_load(handle.read(1024 * 1024))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def publish(
    results: Path, source: Path, job_name: str, claim_id: str, *, recovering: bool = False
) -> Path:
    """Give the complete, fsynced result file `source` the first free result name.

    The name is taken with a hard link, which never replaces an existing file (nor follows a
    symlink planted there); where links are impossible (`results` on another file system,
    FAT), `source` is copied into `results` first and the copy placed without replacing (see
    `durable.place`). With `recovering` (a retry, or a restart after a crash between
    publishing and recording it), a result of the same claim already there is returned and
    nothing new is written.
    """
    # Its file time is when it is published, which retention (`results_days`) ages it by: a
    # result staged before a long outage is not removed the moment it appears.
    with contextlib.suppress(OSError):
        os.utime(source)
    copy: Path | None = None
    try:
        for name in result_names(job_name):
            target = results / name
            if os.path.lexists(target):
                if recovering and _belongs_to(target, claim_id):
                    return target
                continue
            try:
                if copy is None and features.current().hard_links:
                    try:
                        os.link(source, target, follow_symlinks=False)
                    except FileExistsError:
                        raise
                    except OSError as exc:
                        if exc.errno not in NO_LINK:
                            raise
                    else:
                        fsync_dir(results)
                        return target
                if copy is None:
                    copy = copy_into(results, source, secrets.token_hex(8))
                place(copy, target)
                copy = None
                return target
            except FileExistsError:
                continue
        raise AssertionError("unreachable: result_names is endless")
    finally:
        if copy is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy)


def _belongs_to(path: Path, claim_id: str) -> bool:
    return not path.is_symlink() and (read_result(path) or {}).get("claim_id") == claim_id
