"""Retention: deleting result files and archived job files past their age.

`results_days` and `archive_days` (0: keep for ever) say how old a file may grow. A result's
age is its file time (mtime: it is written once, when the job ends). An archived job file's
age is its mtime too, which the archive step sets to the time of archiving
(`ClaimStore._archive`): the job file's own mtime says nothing about when it was archived (a
job copied with `cp -p` keeps a years-old one), ctime is not a creation time on every system
(and `os.utime` moves it), and only a daily layout's date folders would say it otherwise.

Only result files (`<stem>.result.yaml`, `<stem>.result.<n>.yaml`) leave the results folder,
and only files the archive step puts there leave the archive: never a folder of ours, a
hidden file (a temp file being written), nor anything outside those folders. Empty date
folders of the archive (`YYYY/MM/DD`) older than yesterday go too.

A waiting `dropflow submit --wait` keeps a marker in the route's processing folder naming the
stems of the results it looks for (`Waiter`); results of those stems are kept while the marker
is fresh (refreshed every `WAITER_REFRESH` seconds, ignored after `WAITER_STALE`), whichever
machine the waiter runs on.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from watcher import defaults
from watcher.config.routes import Route
from watcher.config.settings import Settings
from watcher.folders.durable import write_atomic
from watcher.folders.pruned import write_cutoff

__all__ = [
    "WAITER_PREFIX",
    "Kind",
    "Pruned",
    "Waiter",
    "interval",
    "is_result_name",
    "kept_days",
    "prune",
    "waiting_stems",
]

logger = logging.getLogger(__name__)

Kind = Literal["result", "archived", "folder"]

RESULT_NAME = re.compile(r"^(?P<stem>[^.].*)\.result(?:\.[0-9]+)?\.yaml$")
WAITER_PREFIX = ".dropflow-waiting-"
"""A waiting `submit`'s marker in a route's processing folder: `{"stems": [...]}`."""
_DATE_PARTS = (re.compile(r"^[0-9]{4}$"), re.compile(r"^[0-9]{2}$"), re.compile(r"^[0-9]{2}$"))


def is_result_name(name: str) -> bool:
    """Whether a file name is a result file's (`<stem>.result[.<n>].yaml`, not hidden)."""
    return RESULT_NAME.match(name) is not None


@dataclass
class Pruned:
    """What one retention run removed (or, dry, would remove), per route."""

    dry_run: bool = False
    results: dict[str, int] = field(default_factory=dict)
    archived: dict[str, int] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=dict)
    kept_for_waiters: dict[str, int] = field(default_factory=dict)
    days: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per route, the `results_days` and `archive_days` applied (`kept_days`)."""
    cutoffs: dict[str, float] = field(default_factory=dict)
    """Per route, the results cut-off applied (routes with `results_days` only)."""

    def total(self, route: str) -> int:
        return self.results.get(route, 0) + self.archived.get(route, 0) + self.folders.get(route, 0)


def interval(settings: Settings) -> float | None:
    """Seconds between the service's retention runs; None when nothing is ever deleted."""
    periods = [
        days * 86400
        for route in settings.served.values()
        for days in (route.results_days, route.archive_days)
        if days
    ]
    if not periods:
        return None
    return min(defaults.RETENTION_INTERVAL, *periods)


def kept_days(settings: Settings, route: Route, folder: Literal["results", "archive"]) -> float:
    """The days `route`'s results (or archived files) are kept: its own setting, or, for a
    folder several routes share, the longest of theirs (0, for ever, if any keeps for ever):
    a file there cannot tell whose it is, and none is removed before every route lets it go."""
    key = "results_days" if folder == "results" else "archive_days"
    place = getattr(route, folder)
    days = [getattr(r, key) for r in settings.served.values() if getattr(r, folder) == place]
    return 0.0 if 0 in days else max(days)


def prune(
    settings: Settings,
    *,
    now: float | None = None,
    dry_run: bool = False,
    on_path: Callable[[Kind, Path], None] | None = None,
    stopping: threading.Event | None = None,
) -> Pruned:
    """Delete (with `dry_run`, only list) every route's results and archived files past their
    age (`kept_days`); `on_path` hears of each path first. A folder shared by several routes
    is looked through once. After a route's results were looked through, its cut-off is
    recorded (`watcher.folders.pruned`) so that `dropflow status` counts only what is left.

    `stopping` cuts a run short between files (the service stopping); the cut-off is then not
    recorded.
    """
    now = time.time() if now is None else now
    report = Pruned(dry_run=dry_run)
    seen: set[tuple[str, Path]] = set()
    served = settings.served
    for name, route in served.items():
        report.results[name] = report.archived[name] = report.folders[name] = 0
        results_days = kept_days(settings, route, "results")
        archive_days = kept_days(settings, route, "archive")
        report.days[name] = (results_days, archive_days)
        if results_days:
            cutoff = now - results_days * 86400
            if ("results", route.results) not in seen:
                seen.add(("results", route.results))
                sharing = [r for r in served.values() if r.results == route.results]
                keep = waiting_stems([r.processing for r in sharing], now)
                recursive = any(r.recursive for r in sharing)
                for path in _old_files(route.results, cutoff, recursive, stopping):
                    match = RESULT_NAME.match(path.name)
                    if match is None:  # not a result: never retention's to remove
                        continue
                    if match["stem"] in keep:
                        report.kept_for_waiters[name] = report.kept_for_waiters.get(name, 0) + 1
                        continue
                    if _remove(path, "result", dry_run, on_path):
                        report.results[name] += 1
            if stopping is not None and stopping.is_set():
                return report
            report.cutoffs[name] = cutoff
            if not dry_run:
                _record_cutoff(route.processing, cutoff)
        if archive_days and ("archive", route.archive) not in seen:
            seen.add(("archive", route.archive))
            cutoff = now - archive_days * 86400
            gone: set[Path] = set()
            for path in _old_files(route.archive, cutoff, True, stopping):
                if _remove(path, "archived", dry_run, on_path):
                    report.archived[name] += 1
                    gone.add(path)
            for folder in _empty_date_folders(route.archive, now, gone):
                if _remove(folder, "folder", dry_run, on_path):
                    report.folders[name] += 1
        if stopping is not None and stopping.is_set():
            break
    return report


def _record_cutoff(processing: Path, cutoff: float) -> None:
    if not processing.is_dir():
        return  # never served: no `status` index to keep in step
    try:
        write_cutoff(processing, cutoff)
    except OSError as exc:  # e.g. a `dropflow prune` writing it at the same moment
        logger.warning("retention: cannot record the cut-off in %s: %s", processing, exc)


def _old_files(
    folder: Path, cutoff: float, recursive: bool, stopping: threading.Event | None
) -> Iterator[Path]:
    """Files (and links) in `folder` whose mtime is before `cutoff`, not hidden; subfolders
    too with `recursive`, except hidden ones."""
    try:
        with os.scandir(folder) as found:
            entries = sorted(found, key=lambda entry: entry.name)  # a listing in name order
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if stopping is not None and stopping.is_set():
            return
        if entry.name.startswith("."):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            if recursive:
                yield from _old_files(Path(entry.path), cutoff, recursive, stopping)
        elif info.st_mtime < cutoff:
            yield Path(entry.path)


def _empty_date_folders(archive: Path, now: float, gone: set[Path]) -> Iterator[Path]:
    """The date folders (`YYYY/MM/DD`, and the folders under them) that hold nothing but what
    is in `gone` (the files this run removes), deepest first, of dates before yesterday:
    today's and yesterday's may be about to take a job (in any time zone). A dry run lists
    the same folders as a real one."""
    oldest_kept = datetime.date.fromtimestamp(now) - datetime.timedelta(days=1)
    for year in _subfolders(archive, _DATE_PARTS[0]):
        for month in _subfolders(year, _DATE_PARTS[1]):
            for day in _subfolders(month, _DATE_PARTS[2]):
                try:
                    date = datetime.date(int(year.name), int(month.name), int(day.name))
                except ValueError:
                    continue
                if date < oldest_kept:
                    emptied: list[Path] = []
                    if _emptied(day, gone, emptied):
                        yield from emptied
            this_month = (int(year.name), int(month.name))
            if this_month < (oldest_kept.year, oldest_kept.month) and _emptied(month, gone, []):
                yield month
        if int(year.name) < oldest_kept.year and _emptied(year, gone, []):
            yield year


def _subfolders(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [
                Path(entry.path)
                for entry in entries
                if pattern.match(entry.name) and entry.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []


def _emptied(folder: Path, gone: set[Path], emptied: list[Path]) -> bool:
    """Whether `folder` holds only what is in `gone` and folders that do too; those folders
    (deepest first, then `folder`) are added to `emptied` and to `gone`."""
    try:
        with os.scandir(folder) as found:
            entries = list(found)
    except OSError:
        return False
    empty = True
    for entry in entries:
        path = Path(entry.path)
        if path in gone:
            continue
        if entry.is_dir(follow_symlinks=False) and _emptied(path, gone, emptied):
            continue
        empty = False
    if empty:
        emptied.append(folder)
        gone.add(folder)
    return empty


def _remove(
    path: Path, kind: Kind, dry_run: bool, on_path: Callable[[Kind, Path], None] | None
) -> bool:
    if kind == "folder":
        if not dry_run:
            try:
                os.rmdir(path)  # only an empty folder: never a file being archived into it
            except OSError:
                return False
        if on_path is not None:
            on_path(kind, path)
        return True
    if on_path is not None:
        on_path(kind, path)
    if dry_run:
        return True
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("retention: cannot remove %s: %s", path, exc)
        return False
    return True


# -- a waiting `submit`'s marker -------------------------------------------------------------


def waiting_stems(processing: list[Path], now: float) -> set[str]:
    """The result stems fresh waiters' markers in these processing folders name."""
    stems: set[str] = set()
    for folder in processing:
        try:
            with os.scandir(folder) as found:
                entries = list(found)
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(WAITER_PREFIX):
                continue
            with contextlib.suppress(OSError, ValueError, TypeError):
                if entry.stat(follow_symlinks=False).st_mtime < now - defaults.WAITER_STALE:
                    continue
                data = json.loads(Path(entry.path).read_bytes())
                stems.update(str(stem) for stem in data["stems"])
    return stems


class Waiter:
    """The marker a waiting `submit` keeps in a route's processing folder: its result stems,
    rewritten every `WAITER_REFRESH` seconds (its mtime is its freshness), removed at the end."""

    def __init__(self, processing: Path, stems: list[str]) -> None:
        self.path = processing / f"{WAITER_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.json"
        self.data = json.dumps({"stems": sorted(set(stems))}).encode()
        self.written = 0.0

    def refresh(self, now: float | None = None) -> None:
        """Write the marker if it is due (never fails the wait: a marker is a courtesy)."""
        now = time.monotonic() if now is None else now
        if now - self.written < defaults.WAITER_REFRESH:
            return
        try:
            os.replace(write_atomic(self.path.parent, self.data), self.path)
        except OSError as exc:
            logger.debug("cannot write %s: %s", self.path, exc)
        self.written = now

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
