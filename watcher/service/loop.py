"""The service: inbox in, flow runs through the runner, result files out.

Threads: the main thread only waits for signals (Python delivers them there alone) and asks
the service to stop. The service's event loop runs in its own thread, so the Prefect engine,
which installs a SIGTERM handler around every flow run it starts on the main thread, never
replaces ours: a SIGTERM stops the service gracefully instead of crashing the running flows.
The watchdog observer thread only posts events to that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

from watcher import defaults, features
from watcher.config.registry import Registry
from watcher.config.settings import Settings
from watcher.folders.claims import Claim, ClaimStore
from watcher.folders.durable import TEMP_PREFIX
from watcher.folders.lock import DataDirLock, FolderLock, Owner, read_owner
from watcher.folders.results import now_iso
from watcher.running.contract import Runner, RunnerHealth
from watcher.service.gate import RunGate
from watcher.service.guard import FolderGuard, Lost, overlaps
from watcher.service.inbox import Inbox
from watcher.service.pipeline import RETRY_FIRST, JobPipeline
from watcher.service.signals import StopSignals

__all__ = ["FolderError", "ServedElsewhere", "Service"]

logger = logging.getLogger(__name__)


_TICK = 0.1  # seconds between settle checks while files wait to be complete
_FOLDER_CHECK = 1.0  # seconds between checks that the folders are still the ones served


class FolderError(Exception):
    """The folders cannot serve: the message names the config keys involved."""


class ServedElsewhere(Exception):
    """Another service holds the folders, and this one may not wait as a standby."""


class Service:
    """Runs jobs dropped in the inbox until asked to stop.

    Only one service serves a set of folders (see `watcher.folders.lock`). With `standby`, a service
    that finds them held waits, and takes over when the owner dies or stops; without it,
    `serve` raises `ServedElsewhere`.
    """

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        *,
        standby: bool = True,
        registry: Registry | None = None,
        data_lock: DataDirLock | None = None,
    ) -> None:
        """`registry`: the flows jobs may name, shared with the runner, which loads them at its
        start (default: the config's, never loaded: only wait jobs run). `data_lock`: the
        embedded server's `data_dir`, taken once the folders are this service's."""
        self.settings = settings
        self.runner = runner
        self.registry = registry or settings.registry()
        self.standby = standby
        self.lock = FolderLock(settings.inbox, settings.processing)
        self.data_lock = data_lock
        self.processing = ClaimStore(settings.processing, settings.archive, settings.inbox)
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.signals = StopSignals(wake=self._wake_from_any_thread)
        self._error: BaseException | None = None
        self._fatal: Exception | None = None  # the runner could not start
        self._lost: Lost | None = None  # the folders stopped being ours while serving
        self._main: asyncio.Task[None] | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._pipeline: JobPipeline | None = None  # made in `_serve`, with the inbox
        self._recording: set[asyncio.Task[None]] = set()  # owner records being written

    # -- running in a thread, stopping from the main thread --------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or `request_stop`); return the exit status.

        0 after a graceful stop, `defaults.EXIT_INTERRUPTED` after a second signal,
        `defaults.EXIT_FATAL` after `processing` or its lock was lost while serving (logged).
        """
        thread = threading.Thread(target=self._thread_main, name="dropflow-service")
        with self.signals.capture():
            thread.start()
            while thread.is_alive():
                # A timed join keeps the main thread waking up to run signal handlers.
                thread.join(0.2)
        if self._error is not None:
            raise self._error
        if self.signals.forced:
            return defaults.EXIT_INTERRUPTED
        return defaults.EXIT_FATAL if self._lost is not None else 0

    def request_stop(self) -> None:
        """Stop gracefully; a second call stops at once. Safe from any thread."""
        self.signals.request()

    def _wake_from_any_thread(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_stop)

    def _wake_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self.signals.forced:
            for task in self._job_tasks:
                task.cancel()
            if not self.started.is_set() and self._main is not None:
                self._main.cancel()  # still starting: give up

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as exc:  # handed to the main thread, which re-raises it
            if not (self.signals.forced and isinstance(exc, asyncio.CancelledError)):
                self._error = exc
            self.started.set()

    # -- the service proper ----------------------------------------------------------------

    async def serve(self) -> None:
        """Prepare the folders, take their lock (waiting as a standby if allowed), recover the
        claims left over, start the runner and the inbox, dispatch jobs until stopped, drain,
        close the runner."""
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[Path | Claim] = asyncio.Queue()
        if self.signals.count:
            self._stop.set()

        s = self.settings
        await asyncio.to_thread(_prepare_folders, self.settings)
        if not await self._own_folders():
            logger.info("stopped before taking over")
            return
        self.guard = FolderGuard(s, self.lock)
        try:
            if self.data_lock is not None:
                await asyncio.to_thread(self.data_lock.acquire, self._owner, self.signals.stopping)
            for stray in s.results.glob(f"{TEMP_PREFIX}*"):
                stray.unlink(missing_ok=True)
            recovered = await asyncio.to_thread(self.processing.recover)
            if recovered:
                logger.info("recovering %d job(s) left in %s", len(recovered), s.processing)
            # The runner starts in the background, from `_serve`: only the owner of the
            # folders starts it (a standby never takes the embedded server's port).
            try:
                await self._serve(recovered)
            finally:
                await self.runner.close()
        finally:
            if self.data_lock is not None:
                self.data_lock.release()
            self.lock.release()
        if self._fatal is not None:
            raise self._fatal
        logger.info("stopped" if self._lost is None else "stopped: the folders were lost")

    async def _own_folders(self) -> bool:
        """Take the folders' lock, waiting as a standby while another service holds it."""
        if not await asyncio.to_thread(self.lock.try_acquire):
            owner = read_owner(self.settings.processing)
            held = (
                f"{self.settings.inbox} is served by another dropflow "
                f"({owner.describe() if owner else 'owner unknown'})"
            )
            if not self.standby:
                raise ServedElsewhere(held)
            logger.info("standby: %s; taking over when it stops", held)
            if not await asyncio.to_thread(self.lock.wait, self.signals.stopping):
                return False
            logger.info("taking over %s", self.settings.inbox)
        self._owner = Owner.me(now_iso(), self.settings.runner)
        await asyncio.to_thread(self.lock.record, self._owner)
        return True

    async def _serve(self, recovered: list[Claim]) -> None:
        s = self.settings
        self.inbox = Inbox(
            s.inbox,
            s.patterns,
            settle_seconds=s.settle_seconds,
            polling=s.polling,
            close_events=None if features.current().close_events else False,
            on_ready=self._queue.put_nowait,
        )
        assert self._stop is not None
        self._pipeline = JobPipeline(
            s,
            self.runner,
            self.registry,
            self.processing,
            inbox=self.inbox,
            gate=RunGate.single(s.max_concurrent_jobs, self._stop, self.runner.health),
            forced=lambda: self.signals.forced,
        )
        for claim in recovered:
            self._queue.put_nowait(claim)
        self.inbox.start()
        logger.info(
            "watching %s (results: %s, up to %d jobs at once)",
            s.inbox,
            s.results,
            s.max_concurrent_jobs,
        )
        self.started.set()
        # The runner (Prefect's embedded server: seconds) starts meanwhile: files are claimed
        # and read at once, bad ones get their error result, and good ones wait for it.
        starter = asyncio.create_task(self._start_runner())
        dispatcher = asyncio.create_task(self._dispatch())
        ticker = asyncio.create_task(self._tick())
        try:
            await self._stop.wait()
            logger.info("stopping: no new jobs; %d in progress", len(self._job_tasks))
        finally:
            self.inbox.stop()
            starter.cancel()
            dispatcher.cancel()
            ticker.cancel()
            await self._drain()

    async def _start_runner(self) -> None:
        try:
            description = await self.runner.start()
        except Exception as exc:
            logger.error("cannot start the runner: %s", exc)
            self._fatal = exc
            assert self._stop is not None
            self._stop.set()
            return
        logger.info("runner: %s", description)
        self._owner = replace(self._owner, api=description)
        await self._record_owner()
        self.runner.health.listeners.append(self._health_changed)
        self.runner.health.mark_up()

    def _health_changed(self, health: RunnerHealth) -> None:
        # `dropflow status` reads the owner record: it says the runner is down while it is.
        down = "" if health.up.is_set() else f"{health.reason} (since {now_iso()})"
        self._owner = replace(self._owner, runner_down=down)
        task = asyncio.create_task(self._record_owner())
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_owner(self) -> None:
        try:
            await asyncio.to_thread(self.lock.record, self._owner)
        except OSError as exc:  # only the owner's description: no reason to stop serving
            logger.warning("cannot record the runner in the folders' lock: %s", exc)

    async def _dispatch(self) -> None:
        # Every file is claimed and read at once; only running its flow waits for a slot, so
        # a bad file gets its error result without queueing behind long jobs.
        while True:
            item = await self._queue.get()
            assert self._pipeline is not None
            task = asyncio.create_task(self._pipeline.handle(item))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._job_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("job handler failed", exc_info=task.exception())

    async def _drain(self) -> None:
        # Jobs still waiting for a run slot do not start now: they go back at once.
        waiting = self._pipeline.gate.waiting if self._pipeline is not None else set()
        for task in list(waiting):
            if task is not None:
                task.cancel()
        # Without processing, nothing a running job does can be recorded: no grace then.
        lost = self._lost is not None and not self._lost.claims_reachable
        if self._job_tasks and not self.signals.forced and not lost:
            grace = self.settings.shutdown_grace
            logger.info("waiting up to %gs for %d running job(s)", grace, len(self._job_tasks))
            await asyncio.wait(set(self._job_tasks), timeout=grace)
        for task in list(self._job_tasks):
            task.cancel()
        if self._job_tasks:
            await asyncio.wait(set(self._job_tasks))

    async def _tick(self) -> None:
        """Settle checks, folder and health checks, and periodic rescans."""
        next_scan = time.monotonic() + self.settings.rescan_interval
        next_check = time.monotonic() + _FOLDER_CHECK
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.inbox.rescan_needed.wait(), _TICK)
            try:
                healthy = self.inbox.healthy()
                if not healthy or time.monotonic() >= next_check:
                    next_check = time.monotonic() + _FOLDER_CHECK
                    if self._check_folders():
                        return
                    healthy = self.inbox.healthy()
                if not healthy:
                    logger.error("inbox %s or its watcher is gone: restarting", self.inbox.folder)
                    if not self._rewatch_inbox():
                        return
                elif self.inbox.rescan_needed.is_set() or time.monotonic() >= next_scan:
                    self.inbox.rescan_needed.clear()
                    next_scan = time.monotonic() + self.settings.rescan_interval
                    self.inbox.scan()
                elif self.inbox.pending:
                    self.inbox.check_all()
            except OSError as exc:
                logger.error("cannot watch inbox %s: %s; retrying", self.inbox.folder, exc)
                await asyncio.sleep(RETRY_FIRST)

    def _check_folders(self) -> bool:
        """Stop (True) if `processing` or its lock was lost, or a folder is now the inbox (or
        inside it, or around it); watch a replaced inbox again."""
        lost = self.guard.lost() or self.guard.misplaced()
        if lost is not None:
            self._lose(lost)
            return True
        change = self.guard.inbox_changed()
        if change is not None:
            logger.warning(
                "inbox %s was replaced (%s): watching the new folder", self.inbox.folder, change
            )
            return not self._rewatch_inbox()
        return False

    def _rewatch_inbox(self) -> bool:
        """Watch and lock the folder now at the inbox's path (recreated if missing), and scan
        it; False (stopping) if another service holds it."""
        self.inbox.restart()
        self.guard.record_inbox()
        if self.lock.relock_inbox():
            return True
        self._lose(Lost(f"the inbox {self.inbox.folder} is served by another dropflow", True))
        return False

    def _lose(self, lost: Lost) -> None:
        logger.error(
            "stopping: %s; %s (exit status %d)", lost.reason, lost.consequence, defaults.EXIT_FATAL
        )
        self._lost = lost
        assert self._stop is not None
        self._stop.set()


def _prepare_folders(s: Settings) -> None:
    """Create the folders; none may be the inbox under another path, and the inbox and
    processing must share a file system."""
    for folder in (s.inbox, s.results, s.archive, s.processing):
        folder.mkdir(parents=True, exist_ok=True)
    # The settings compare paths; only the folders themselves show a bind mount or a link.
    overlap = overlaps(s)
    if overlap is not None:
        raise FolderError(overlap)
    # A claim is a link (or a rename) from the inbox into processing: atomic only within
    # one file system. Results and the archive may be anywhere.
    if os.stat(s.inbox).st_dev != os.stat(s.processing).st_dev:
        raise FolderError(
            f"inbox ({s.inbox}) and processing ({s.processing}) are on different file "
            "systems; a job is claimed by moving it from one to the other, which is atomic "
            "only within one file system: put processing beside the inbox"
        )
