"""Supervision of the embedded default: the Prefect server process and its PostgreSQL.

A background service is left alone for months, and the OOM killer, a full disk or a careless
`rm -rf` can take away what it started. Every `CHECK_INTERVAL` the supervisor asks the server
what is wrong (`EmbeddedServer.problem`: its process, `data_dir`, PostgreSQL, free space, and
Prefect's own readiness check, which reaches the database). When something is, it tells the
runner (jobs then wait, spending no attempt), logs one WARNING line, and restarts the server,
which starts PostgreSQL again in `data_dir` (recreating it if it was deleted). Restarts that keep
failing back off (1 s doubling to `BACKOFF_MAX`), and the log says so.

It runs on a thread of its own, not on the service's event loop: a check or a restart never
waits behind the jobs, nor behind Prefect's client threads, which may be blocked retrying the
very server that is down (measured: a supervisor on the event loop's thread pool noticed a
killed server 2 to 5 minutes late under `make chaos ARGS=--kill-server`).

Written by hand: a supervisor library (supervisord, circus) would run beside the service
instead of inside it, and could not hold jobs back while it heals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from watcher.server.embedded import SERVER_LOG, EmbeddedServer, EmbeddedServerError, full

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
        on_down: Callable[[str], object],
        on_up: Callable[[], object],
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        """`on_down(reason)`: the server cannot serve (called once per outage and per new
        reason). `on_up()`: it serves again after a restart. Both are called from the
        supervisor's thread."""
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
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._healing = False

    def start(self) -> None:
        """Watch the server from a thread of its own until `stop`."""
        self._thread = threading.Thread(target=self.watch, name="dropflow-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; a restart in progress gives up (the server is stopped after)."""
        self._stopping.set()
        if self._healing:
            self.server.stop()  # a start in progress gives up at once
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def problem(self) -> str | None:
        """Check the server now: why it cannot serve, or None. Blocking."""
        return self.server.problem()

    def watch(self) -> None:
        """Check the server every `check_interval` seconds and heal it, until stopped."""
        while not self._pause(self._interval):
            reason = self.problem()
            if reason is None:
                self._slow = 0
                continue
            if reason.startswith("the Prefect API") and self._slow + 1 < SLOW_CHECKS:
                self._slow += 1  # a slow answer alone: look again before restarting
                continue
            self._slow = 0
            self.heal(reason)

    def heal(self, reason: str) -> None:
        """Restart the server until it serves again (or the supervisor stops); jobs wait."""
        self._healing = True
        try:
            self._heal(reason)
        finally:
            self._healing = False

    def _heal(self, reason: str) -> None:
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
        while not self._stopping.is_set():
            if self.server.owns_cluster and full(data_dir):
                if not full_logged:
                    logger.error(
                        "the file system of data_dir %s is full: PostgreSQL cannot write; jobs "
                        "wait until space is freed",
                        data_dir,
                    )
                    self._on_down(f"the file system of data_dir {data_dir} is full")
                    full_logged = True
                self._pause(self._interval)
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
                if self._pause(delay):
                    return
            started = time.monotonic()
            try:
                self.server.restart()
            except EmbeddedServerError as exc:
                self._failed_starts += 1
                self._last_start = time.monotonic()
                if not self._stopping.is_set():
                    logger.error("the embedded Prefect server did not start again: %s", exc)
                    self._on_down(str(exc))
                continue
            self.restarts += 1
            self._last_start = time.monotonic()
            if self.problem() is not None:
                self._failed_starts += 1
                continue
            logger.warning(
                "the embedded Prefect server serves again (restarted in %.1fs)",
                time.monotonic() - started,
            )
            self._on_up()
            return

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; whether the supervisor is stopping."""
        return self._stopping.wait(seconds)

    def _backoff(self) -> float:
        """The wait before the next restart: none after a stable run."""
        if self._failed_starts == 0:
            return 0.0
        return float(min(BACKOFF_FIRST * 2 ** (self._failed_starts - 1), BACKOFF_MAX))
