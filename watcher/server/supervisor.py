"""Supervision of the embedded default: the Prefect server process and its PostgreSQL.

A background service is left alone for months, and the OOM killer, a full disk or a careless
`rm -rf` can take away what it started. Every `CHECK_INTERVAL` the supervisor asks the server
what is wrong (`EmbeddedServer.problem`: its process, `data_dir`, PostgreSQL, free space, and
Prefect's own readiness check, which reaches the database). When something is, it tells the
runner (jobs then wait, spending no attempt), logs one WARNING line, and restarts the server,
which starts PostgreSQL again in `data_dir` (recreating it if it was deleted). Restarts that keep
failing back off (1 s doubling to `BACKOFF_MAX`), and the log says so.

Written by hand: a supervisor library (supervisord, circus) would run beside the service
instead of inside it, and could not hold jobs back while it heals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from watcher.server.embedded import SERVER_LOG, EmbeddedServer, EmbeddedServerError

__all__ = ["BACKOFF_MAX", "CHECK_INTERVAL", "Supervisor"]

# One logger name for all of the service's lines, as docs/service.md shows them.
logger = logging.getLogger("watcher.service.loop")

CHECK_INTERVAL = 1.0
"""Seconds between checks of the server."""
SLOW_CHECKS = 3
"""A server that only fails to answer /ready (a busy machine may be slow) counts as down after
this many checks in a row; a dead process, a missing PostgreSQL or a full disk counts at once."""
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
"""Seconds before a restart that follows a failed one, doubling."""
STABLE = 10.0
"""A server that stayed up this long had recovered: its next crash restarts it at once. One that
fails sooner counts as failing again, and its restart waits (`BACKOFF_FIRST` doubling)."""


class Supervisor:
    """Keeps an `EmbeddedServer` serving, restarting it when it or its PostgreSQL fails."""

    def __init__(
        self,
        server: EmbeddedServer,
        *,
        on_down: Callable[[str], None],
        on_up: Callable[[], Awaitable[None]],
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        """`on_down(reason)`: the server cannot serve (called once per outage and per new
        reason). `on_up()`: it serves again after a restart."""
        self.server = server
        self.restarts = 0
        """How many times the server was restarted; a run that spans a restart may have lost
        its state to it."""
        self._on_down = on_down
        self._on_up = on_up
        self._interval = check_interval
        self._slow = 0
        self._last_start = time.monotonic()
        self._failed_starts = 0

    async def problem(self) -> str | None:
        """Check the server now: why it cannot serve, or None."""
        return await asyncio.to_thread(self.server.problem)

    async def watch(self) -> None:
        """Check the server every `check_interval` seconds and heal it, until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            reason = await self.problem()
            if reason is None:
                self._slow = 0
                continue
            if reason.startswith("the Prefect API") and self._slow + 1 < SLOW_CHECKS:
                self._slow += 1  # a slow answer alone: look again before restarting
                continue
            self._slow = 0
            await self.heal(reason)

    async def heal(self, reason: str) -> None:
        """Restart the server until it serves again; jobs wait meanwhile."""
        self._on_down(reason)
        if time.monotonic() - self._last_start < STABLE:
            self._failed_starts += 1
        else:
            self._failed_starts = 0
        data_dir = self.server.options.data_dir
        if "was deleted" in reason:
            logger.warning(
                "%s while the service ran: the Prefect history it held is gone; starting a new "
                "one there",
                reason,
            )
        else:
            logger.warning(
                "%s; restarting it, jobs wait (the server's own log: %s)",
                reason,
                data_dir / SERVER_LOG,
            )
        full_logged = False
        while True:
            if await asyncio.to_thread(_full, self.server):
                if not full_logged:
                    logger.error(
                        "the file system of data_dir %s is full: PostgreSQL cannot write; jobs "
                        "wait until space is freed",
                        data_dir,
                    )
                    self._on_down(f"the file system of data_dir {data_dir} is full")
                    full_logged = True
                await asyncio.sleep(self._interval)
                continue
            if full_logged:
                logger.warning("data_dir %s has free space again; restarting the server", data_dir)
                full_logged = False
            delay = self._backoff()
            if delay:
                logger.warning(
                    "the embedded Prefect server failed %d time(s) in a row; restarting it in %gs",
                    self._failed_starts,
                    delay,
                )
                await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.server.restart)
            except EmbeddedServerError as exc:
                self._failed_starts += 1
                self._last_start = time.monotonic()
                logger.error("the embedded Prefect server did not start again: %s", exc)
                self._on_down(str(exc))
                continue
            self.restarts += 1
            self._last_start = time.monotonic()
            if await self.problem() is not None:
                self._failed_starts += 1
                continue
            logger.warning(
                "the embedded Prefect server serves again (restarted in %.1fs)",
                time.monotonic() - started,
            )
            await self._on_up()
            return

    def _backoff(self) -> float:
        """The wait before the next restart: none after a stable run."""
        if self._failed_starts == 0:
            return 0.0
        return float(min(BACKOFF_FIRST * 2 ** (self._failed_starts - 1), BACKOFF_MAX))


def _full(server: EmbeddedServer) -> bool:
    from watcher.server.embedded import full

    return server.owns_cluster and full(server.options.data_dir)
