"""`dropflow status`: what is going on in a set of folders, read from the folders alone.

It works whether or not a service runs, and changes nothing (the only lock it touches is
`lock.is_held`'s momentary probe):

- `service`: whether a live service holds the folders' lock, and its owner record (pid, host,
  since when, runner, Prefect API);
- `inbox`: the job files waiting there;
- `in_flight`: the claims in `processing` (`<claim id>.<attempt>/`): the job, its attempt, its
  age since it was first claimed, its state (`claimed`: running, or waiting for a run slot;
  `finishing`: its result is staged), and its flow run: the name it gets (from the job file),
  and its id once its result is staged (the service records no flow run id before that);
- `results`: results published (by file time) in the last hour and the last day, by status,
  and the newest ten.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from watcher.config.settings import Settings
from watcher.folders.claims import CLAIM_FOLDER, STAGED_RESULT
from watcher.folders.lock import is_held, read_owner
from watcher.folders.results import read_result
from watcher.jobs.messages import one_line
from watcher.jobs.model import JobError
from watcher.jobs.names import ID_TIME_FORMAT, is_job_name
from watcher.jobs.reading import parse_job, read_job_bytes

__all__ = ["gather", "render"]

NEWEST = 10
"""How many of the newest results `status` shows."""
STATUSES = ("completed", "canceled", "error")


def _service(settings: Settings) -> dict[str, Any] | None:
    if not is_held(settings.inbox, settings.processing):
        return None
    owner = read_owner(settings.processing)
    if owner is None:
        return {
            "pid": None,
            "host": None,
            "since": None,
            "runner": None,
            "api": None,
            "runner_down": None,
        }
    return asdict(owner)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries; none if it does not exist (yet)."""
    try:
        return list(os.scandir(folder))
    except FileNotFoundError:
        return []


def _age(seconds: float) -> float:
    """An age to show: never below 0, though a file's time or a claim's (written by another
    machine, or before the clock was set back) may be in the future."""
    return max(0.0, round(seconds, 1))


def _inbox(settings: Settings, now: float) -> dict[str, Any]:
    waiting: list[tuple[float, str]] = []
    for entry in _entries(settings.inbox):
        if is_job_name(entry.name, settings.patterns):
            try:
                waiting.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
            except FileNotFoundError:
                continue
    waiting.sort()
    return {
        "folder": str(settings.inbox),
        "backlog": len(waiting),
        "oldest_age_s": _age(now - waiting[0][0]) if waiting else None,
        "files": [name for _, name in waiting[:NEWEST]],
    }


def _in_flight(settings: Settings, now: datetime) -> list[dict[str, Any]]:
    claims: list[dict[str, Any]] = []
    for entry in sorted(_entries(settings.processing), key=lambda e: e.name):
        match = CLAIM_FOLDER.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            names = [n for n in os.listdir(entry.path) if not n.startswith(".")]
        except FileNotFoundError:
            continue  # finished meanwhile
        staged = read_result(Path(entry.path) / STAGED_RESULT) or {}
        claimed = datetime.strptime(match["at"], ID_TIME_FORMAT).replace(tzinfo=UTC)
        claims.append(
            {
                "job": names[0] if names else None,
                "claim_id": match["id"],
                "attempt": int(match["attempt"]),
                "age_s": _age((now - claimed).total_seconds()),
                "state": "finishing" if staged else "claimed",
                "flow_run_id": staged.get("flow_run_id"),
                "flow_run_name": staged.get("flow_run_name")
                or _run_name(Path(entry.path), names, settings),
            }
        )
    return claims


def _run_name(folder: Path, names: list[str], settings: Settings) -> str | None:
    """The name the job's flow run gets (its `name`, or the file's stem), read from the claimed
    job file: what to look for in the Prefect UI while its id is not recorded yet."""
    if not names:
        return None
    try:
        job = parse_job(
            read_job_bytes(folder / names[0], settings.max_job_bytes), settings.job_limits
        )
    except (JobError, OSError):
        return None
    return job.name or os.fsencode(Path(names[0]).stem).decode("utf-8", "replace")


def _results(settings: Settings, now: float) -> dict[str, Any]:
    found: list[tuple[float, Path]] = []
    for entry in _entries(settings.results):
        if entry.name.startswith(".") or ".result" not in entry.name:
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                found.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path)))
        except FileNotFoundError:
            continue
    found.sort(reverse=True)
    hour = dict.fromkeys(STATUSES, 0)
    day = dict.fromkeys(STATUSES, 0)
    newest: list[dict[str, Any]] = []
    for mtime, path in found:
        recent = now - mtime <= timedelta(days=1).total_seconds()
        if not recent and len(newest) >= NEWEST:
            break
        data = read_result(path) or {}
        status = str(data.get("status"))
        if recent and status in day:
            day[status] += 1
            if now - mtime <= 3600:
                hour[status] += 1
        if len(newest) < NEWEST:
            newest.append(
                {
                    "file": path.name,
                    "job": data.get("job"),
                    "status": data.get("status"),
                    "finished_at": data.get("finished_at"),
                    "message": data.get("message"),
                    "submission": data.get("submission"),
                }
            )
    return {
        "folder": str(settings.results),
        "last_hour": hour,
        "last_day": day,
        "newest": newest,
    }


def gather(settings: Settings) -> dict[str, Any]:
    """The status of the folders of `settings`, as `dropflow status --json` prints it."""
    return {
        "service": _service(settings),
        "inbox": _inbox(settings, datetime.now().timestamp()),
        "in_flight": _in_flight(settings, datetime.now(UTC)),
        "results": _results(settings, datetime.now().timestamp()),
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES)


def render(status: dict[str, Any], out: TextIO) -> None:
    """Print `status` (from `gather`) for people."""
    service, inbox = status["service"], status["inbox"]
    lines = []
    if service is None:
        lines.append(f"service:    none is serving {inbox['folder']}")
    else:
        lines.append(
            f"service:    serving, pid {service['pid']} on {service['host']}, since "
            f"{service['since']}"
        )
        lines.append(f"            runner {service['runner'] or '?'}: {service['api'] or '?'}")
        if service.get("runner_down"):
            lines.append(f"            runner DOWN: {service['runner_down']}; jobs wait")
    oldest = f", oldest {inbox['oldest_age_s']:g} s" if inbox["backlog"] else ""
    lines.append(f"inbox:      {inbox['backlog']} waiting in {inbox['folder']}{oldest}")
    lines.extend(f"              {name}" for name in inbox["files"])
    lines.append(f"in flight:  {len(status['in_flight'])}")
    for claim in status["in_flight"]:
        run = f"{claim['flow_run_name'] or '-'} ({claim['flow_run_id'] or 'id not known yet'})"
        lines.append(
            f"              {claim['job']}  attempt {claim['attempt']}  age {claim['age_s']:g} s"
            f"  {claim['state']}  flow run {run}  (claim {claim['claim_id']})"
        )
    results = status["results"]
    lines.append(f"results:    {results['folder']}")
    lines.append(f"  last hour:  {_counts(results['last_hour'])}")
    lines.append(f"  last day:   {_counts(results['last_day'])}")
    lines.append(f"  newest {len(results['newest'])}:")
    for item in results["newest"]:
        lines.append(
            f"              {item['finished_at']}  {item['status']:<9}  {item['file']}  "
            f"{item['message']}"
        )
    for line in lines:
        print(one_line(line), file=out)
