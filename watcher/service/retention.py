"""The service's retention runs: one at start (once the runner is up), then every
`watcher.folders.retention.interval`.

Each run goes through the folders in a thread, off the event loop and off the path to the first
job (a restart stays fast however many files there are), and logs one line per route: always
at start, afterwards only when it removed something.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from watcher.config.settings import Settings
from watcher.folders.retention import Pruned, interval, prune

__all__ = ["keep_pruning", "log_pruned"]

logger = logging.getLogger(__name__)

_FIRST_WAIT = 120.0  # seconds the first run waits for the runner at most


async def keep_pruning(
    settings: Settings, stopping: threading.Event, after: asyncio.Event | None = None
) -> None:
    """Run retention once `after` is set (the runner is up: the first jobs do not share the
    machine with a scan of a big folder; at most `_FIRST_WAIT` seconds), then periodically,
    until cancelled (or `stopping` is set, which also cuts a run short between files)."""
    every = interval(settings)
    if every is None:
        return
    if after is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(after.wait(), _FIRST_WAIT)
    first = True
    while not stopping.is_set():
        try:
            report = await asyncio.to_thread(prune, settings, stopping=stopping)
        except OSError as exc:  # a folder unreadable now: the next run tries again
            logger.warning("retention: %s; trying again in %g s", exc, every)
        except Exception:  # never a reason to stop serving jobs
            logger.exception("retention failed; trying again in %g s", every)
        else:
            log_pruned(settings, report, always=first)
        first = False
        await asyncio.sleep(every)


def log_pruned(settings: Settings, report: Pruned, *, always: bool) -> None:
    """One INFO line per route: what retention removed (`always`: also when nothing)."""
    for name in settings.served:
        kept = report.kept_for_waiters.get(name, 0)
        days = report.days.get(name, (0.0, 0.0))
        if not always and not report.total(name) and not kept:
            continue
        logger.info(
            "retention: %s%s, %s, %d empty date folder(s)%s",
            f"route {name}: " if settings.routes is not None else "",
            _part(report.results.get(name, 0), "result(s)", "results_days", days[0]),
            _part(report.archived.get(name, 0), "archived file(s)", "archive_days", days[1]),
            report.folders.get(name, 0),
            f", {kept} result(s) kept for a waiting submit" if kept else "",
        )


def _part(count: int, what: str, key: str, days: float) -> str:
    if not days:
        return f"{what} kept for ever"
    return f"removed {count} {what} ({key}: {days:g})"
