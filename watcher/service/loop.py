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
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from watcher import defaults, features
from watcher.config.registry import Registry
from watcher.config.routes import Route
from watcher.config.settings import Settings
from watcher.folders.claims import Claim, ClaimStore
from watcher.folders.durable import TEMP_PREFIX
from watcher.folders.ledger import Ledger
from watcher.folders.lock import DataDirLock, FolderLock, Owner, read_owner, wait_for
from watcher.folders.results import now_iso
from watcher.running.contract import Runner, RunnerHealth
from watcher.service.gate import Slots
from watcher.service.guard import FolderGuard, Lost, overlaps, routes_overlap
from watcher.service.inbox import Inbox
from watcher.service.pipeline import RETRY_FIRST, JobPipeline
from watcher.service.retention import keep_pruning
from watcher.service.signals import StopSignals
from watcher.service.vitals import Vitals

__all__ = ["FolderError", "ServedElsewhere", "Service"]

logger = logging.getLogger(__name__)


_TICK = 0.1  # seconds between settle checks while files wait to be complete
_FOLDER_CHECK = 1.0  # seconds between checks that the folders are still the ones served


class FolderError(Exception):
    """The folders cannot serve: the message names the config keys involved."""


class ServedElsewhere(Exception):
    """Another service holds the folders, and this one may not wait as a standby."""


@dataclass
class _Served:
    """One route as the service serves it: its settings (its folders at the top level, see
    `Settings.for_route`), its lock, claims, guard, inbox and pipeline."""

    settings: Settings
    lock: FolderLock
    processing: ClaimStore
    guard: FolderGuard | None = None
    inbox: Inbox | None = None
    pipeline: JobPipeline | None = None

    @property
    def route(self) -> Route:
        return self.settings.route


class Service:
    """Runs jobs dropped in the routes' inboxes until asked to stop.

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
        vitals: Vitals | None = None,
    ) -> None:
        """`registry`: the flows jobs may name, shared with the runner, which loads them at its
        start (default: the config's, never loaded: only wait jobs run). `data_lock`: the
        embedded server's `data_dir`, taken once the folders are this service's. `vitals`: kept
        up to date while it serves, for whatever tells the outside (health, metrics, events)."""
        self.settings = settings
        self.runner = runner
        self.registry = registry or settings.registry()
        self.standby = standby
        self.served = [
            _Served(
                mine := settings.for_route(name),
                FolderLock(mine.inbox, mine.processing),
                ClaimStore(mine.processing, mine.archive, mine.inbox, layout=mine.archive_layout),
            )
            for name in settings.served
        ]
        self.data_lock = data_lock
        self.vitals = vitals or Vitals(list(settings.served))
        health = runner.health
        self.vitals.runner_up = lambda: (health.up.is_set(), health.reason)
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.signals = StopSignals(wake=self._wake_from_any_thread)
        self._error: BaseException | None = None
        self._fatal: Exception | None = None  # the runner could not start
        self._lost: Lost | None = None  # the folders stopped being ours while serving
        self._main: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None  # beats until the tick turns
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Task[None]] = set()  # owner records being written
        self._slots: Slots | None = None  # made in `_serve`: the run slots every route shares

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
        """Prepare the folders, take their locks (waiting as a standby if allowed), recover the
        claims left over, start the runner and the inboxes, dispatch jobs until stopped,
        drain, close the runner."""
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[tuple[_Served, Path | Claim]] = asyncio.Queue()
        if self.signals.count:
            self._stop.set()
        # Until the tick turns (while a standby waits, and a new owner takes the data_dir's
        # lock and recovers its claims), the loop beats on its own: a watchdog must see it
        # alive whenever it is.
        self._beating = beating = asyncio.create_task(self._beat_until_ticking())
        try:
            await self._serve_folders()
        finally:
            beating.cancel()

    async def _serve_folders(self) -> None:
        await asyncio.to_thread(
            _prepare_folders, self.settings, [served.settings for served in self.served]
        )
        if not await self._own_folders():
            logger.info("stopped before taking over")
            return
        for served in self.served:
            served.guard = FolderGuard(served.settings, served.lock)
        try:
            if self.data_lock is not None:
                await asyncio.to_thread(self.data_lock.acquire, self._owner, self.signals.stopping)
            recovered: list[tuple[_Served, Claim]] = []
            for served in self.served:
                for stray in served.settings.results.glob(f"{TEMP_PREFIX}*"):
                    stray.unlink(missing_ok=True)
                ledger = Ledger(served.settings.processing, served.route.name)
                await asyncio.to_thread(ledger.begin)
                claims = await asyncio.to_thread(served.processing.recover)
                if claims:
                    logger.info(
                        "recovering %d job(s) left in %s", len(claims), served.settings.processing
                    )
                recovered += [(served, claim) for claim in claims]
            # The runner starts in the background, from `_serve`: only the owner of the
            # folders starts it (a standby never takes the embedded server's port).
            try:
                await self._serve(recovered)
            finally:
                await self.runner.close()
        finally:
            if self.data_lock is not None:
                self.data_lock.release()
            self._release_locks()
        self.vitals.set_phase("stopped")
        if self._fatal is not None:
            raise self._fatal
        logger.info("stopped" if self._lost is None else "stopped: the folders were lost")

    def _try_locks(self) -> bool:
        """Take every route's lock, or none (in one order, so two services never each hold
        a part and wait for the other's)."""
        taken: list[FolderLock] = []
        for served in sorted(self.served, key=lambda one: str(one.settings.processing)):
            try:
                ok = served.lock.try_acquire()
            except BaseException:
                for lock in taken:
                    lock.release()
                raise
            if not ok:
                for lock in taken:
                    lock.release()
                return False
            taken.append(served.lock)
        return True

    def _release_locks(self) -> None:
        for served in self.served:
            served.lock.release()

    def _record(self, owner: Owner) -> None:
        for served in self.served:
            served.lock.record(owner)

    def _holder(self) -> str:
        """Who holds the folders (the first route found held), for the standby's log line."""
        for served in self.served:
            owner = read_owner(served.settings.processing)
            if owner is not None:
                return owner.describe()
        return "owner unknown"

    async def _own_folders(self) -> bool:
        """Take the folders' locks, waiting as a standby while another service holds one."""
        inboxes = ", ".join(str(served.settings.inbox) for served in self.served)
        if not await asyncio.to_thread(self._try_locks):
            some = "a folder of " if len(self.served) > 1 else ""
            held = f"{some}{inboxes} is served by another dropflow ({self._holder()})"
            if not self.standby:
                raise ServedElsewhere(held)
            logger.info("standby: %s; taking over when it stops", held)
            self.vitals.set_phase("standby")
            if not await asyncio.to_thread(wait_for, self._try_locks, self.signals.stopping):
                return False
            self.vitals.set_phase("starting")
            logger.info("taking over %s", inboxes)
        self._owner = Owner.me(now_iso(), self.settings.runner)
        await asyncio.to_thread(self._record, self._owner)
        return True

    async def _beat_until_ticking(self) -> None:
        while True:
            self.vitals.beat()
            await asyncio.sleep(_TICK)

    async def _serve(self, recovered: list[tuple[_Served, Claim]]) -> None:
        s = self.settings
        assert self._stop is not None
        self._slots = slots = Slots(s.max_concurrent_jobs, self._stop, self.runner.health)
        for served in self.served:
            self._start_route(served, slots)
        for served, claim in recovered:
            self._queue.put_nowait((served, claim))
        for served in self.served:
            assert served.inbox is not None
            served.inbox.start()
            route = served.route
            logger.info(
                "watching %s (%sresults: %s, up to %d jobs at once)",
                route.inbox,
                f"route {route.name}, " if s.routes is not None else "",
                route.results,
                min(s.max_concurrent_jobs, route.max_concurrent_jobs or s.max_concurrent_jobs),
            )
        self.vitals.set_phase("serving")
        self.started.set()
        # The runner (Prefect's embedded server: seconds) starts meanwhile: files are claimed
        # and read at once, bad ones get their error result, and good ones wait for it.
        starter = asyncio.create_task(self._start_runner())
        dispatcher = asyncio.create_task(self._dispatch())
        if self._beating is not None:
            self._beating.cancel()  # the tick beats from now on
        ticker = asyncio.create_task(self._tick())
        # In a thread, once the runner is up: a restart must stay fast.
        halt = threading.Event()
        pruner = asyncio.create_task(keep_pruning(s, halt, self.runner.health.up))
        try:
            await self._stop.wait()
            logger.info("stopping: no new jobs; %d in progress", len(self._job_tasks))
        finally:
            self.vitals.set_phase("stopping")
            for served in self.served:
                if served.inbox is not None:
                    served.inbox.stop()
            starter.cancel()
            dispatcher.cancel()
            ticker.cancel()
            halt.set()  # cuts a run short between files
            pruner.cancel()
            await self._drain()

    def _start_route(self, served: _Served, slots: Slots) -> None:
        """Make the route's inbox, gate and pipeline (the inbox starts watching later)."""
        s, route = served.settings, served.route
        served.inbox = Inbox(
            s.inbox,
            s.patterns,
            settle_seconds=s.settle_seconds,
            polling=s.polling,
            close_events=None if features.current().close_events else False,
            on_ready=lambda path: self._queue.put_nowait((served, path)),
            recursive=route.recursive,
            max_depth=route.max_depth,
            order=route.order,
        )
        gate = slots.gate(
            route.name,
            cap=route.max_concurrent_jobs,
            priority=route.priority,
            order=route.order,
        )
        inbox = served.inbox
        self.vitals.watch_route(route.name, lambda: inbox.pending)
        served.pipeline = JobPipeline(
            s,
            self.runner,
            self.registry,
            served.processing,
            inbox=served.inbox,
            gate=gate,
            forced=lambda: self.signals.forced,
            vitals=self.vitals,
        )

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
            await asyncio.to_thread(self._record, self._owner)
        except OSError as exc:  # only the owner's description: no reason to stop serving
            logger.warning("cannot record the runner in the folders' lock: %s", exc)

    async def _dispatch(self) -> None:
        # Every file is claimed and read at once; only running its flow waits for a slot, so
        # a bad file gets its error result without queueing behind long jobs.
        while True:
            served, item = await self._queue.get()
            assert served.pipeline is not None
            task = asyncio.create_task(served.pipeline.handle(item))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._job_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("job handler failed", exc_info=task.exception())

    async def _drain(self) -> None:
        # Jobs still waiting for a run slot do not start now: they go back at once.
        waiting = self._slots.waiting if self._slots is not None else set()
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
        """Settle checks, folder and health checks, and periodic rescans, for every route."""
        next_scan = time.monotonic() + self.settings.rescan_interval
        next_check = time.monotonic() + _FOLDER_CHECK
        inboxes = [served.inbox for served in self.served if served.inbox is not None]
        while True:
            wakers = [asyncio.ensure_future(inbox.rescan_needed.wait()) for inbox in inboxes]
            await asyncio.wait(wakers, timeout=_TICK, return_when=asyncio.FIRST_COMPLETED)
            for waker in wakers:
                waker.cancel()
            self.vitals.beat()
            check = time.monotonic() >= next_check
            if check:
                next_check = time.monotonic() + _FOLDER_CHECK
            scan = time.monotonic() >= next_scan
            if scan:
                next_scan = time.monotonic() + self.settings.rescan_interval
            for served in self.served:
                if await self._tick_route(served, check=check, scan=scan):
                    return

    async def _tick_route(self, served: _Served, *, check: bool, scan: bool) -> bool:
        """One route's turn of `_tick`; True when the service must stop."""
        inbox = served.inbox
        assert inbox is not None
        try:
            healthy = inbox.healthy()
            if not healthy or check:
                if self._check_folders(served):
                    return True
                healthy = inbox.healthy()
            self.vitals.inbox_alive(served.route.name, healthy)
            if not healthy:
                logger.error("inbox %s or its watcher is gone: restarting", inbox.folder)
                if not self._rewatch_inbox(served):
                    return True
            elif inbox.rescan_needed.is_set() or scan:
                inbox.rescan_needed.clear()
                inbox.scan()
            elif inbox.pending:
                inbox.check_all()
        except OSError as exc:
            logger.error("cannot watch inbox %s: %s; retrying", inbox.folder, exc)
            await asyncio.sleep(RETRY_FIRST)
        return False

    def _check_folders(self, served: _Served) -> bool:
        """Stop (True) if a route's `processing` or its lock was lost, or a folder is now its
        inbox (or inside it, or around it); watch a replaced inbox again."""
        guard, inbox = served.guard, served.inbox
        assert guard is not None and inbox is not None
        lost = guard.lost() or guard.misplaced()
        if lost is not None:
            self._lose(lost)
            return True
        change = guard.inbox_changed()
        if change is not None:
            logger.warning(
                "inbox %s was replaced (%s): watching the new folder", inbox.folder, change
            )
            return not self._rewatch_inbox(served)
        return False

    def _rewatch_inbox(self, served: _Served) -> bool:
        """Watch and lock the folder now at the inbox's path (recreated if missing), and scan
        it; False (stopping) if another service holds it."""
        guard, inbox = served.guard, served.inbox
        assert guard is not None and inbox is not None
        inbox.restart()
        guard.record_inbox()
        if served.lock.relock_inbox():
            return True
        self._lose(Lost(f"the inbox {inbox.folder} is served by another dropflow", True))
        return False

    def _lose(self, lost: Lost) -> None:
        logger.error(
            "stopping: %s; %s (exit status %d)", lost.reason, lost.consequence, defaults.EXIT_FATAL
        )
        self._lost = lost
        assert self._stop is not None
        self._stop.set()


def _prepare_folders(settings: Settings, routes: list[Settings]) -> None:
    """Create every route's folders (`routes`: the settings as each route sees them); none may
    be an inbox under another path, and each inbox and its processing must share a file
    system."""
    for s in routes:
        for folder in (s.inbox, s.results, s.archive, s.processing):
            folder.mkdir(parents=True, exist_ok=True)
        where = "" if settings.routes is None else f"routes: {s.route.name}: "
        # The settings compare paths; only the folders themselves show a bind mount or a link.
        overlap = overlaps(s)
        if overlap is not None:
            raise FolderError(f"{where}{overlap}")
        # A claim is a link (or a rename) from the inbox into processing: atomic only within
        # one file system. Results and the archive may be anywhere.
        if os.stat(s.inbox).st_dev != os.stat(s.processing).st_dev:
            raise FolderError(
                f"{where}inbox ({s.inbox}) and processing ({s.processing}) are on different file "
                "systems; a job is claimed by moving it from one to the other, which is atomic "
                "only within one file system: put processing beside the inbox"
            )
        if not _moves_within(s.inbox, s.processing):
            raise FolderError(
                f"{where}inbox ({s.inbox}) and processing ({s.processing}) are one file system "
                "mounted twice (a bind mount, or a separate ReadWritePaths= entry of a systemd "
                "unit for each); a job is claimed by moving it from one to the other, which "
                "fails across mounts (EXDEV): make both reachable through one mount"
            )
    overlap = routes_overlap(settings)
    if overlap is not None:
        raise FolderError(overlap)


def _moves_within(inbox: Path, processing: Path) -> bool:
    """Whether a file moves from `inbox` into `processing` (False only for EXDEV: two mounts
    of one file system, which `st_dev` does not tell apart). Tried with a real rename: no
    stat field says whether two paths are one mount."""
    probe = inbox / f"{TEMP_PREFIX}probe-{os.getpid()}"
    moved = processing / probe.name
    try:
        probe.touch()
        try:
            os.rename(probe, moved)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        finally:
            probe.unlink(missing_ok=True)
        moved.unlink(missing_ok=True)
    except OSError:
        pass  # not this check's to report: the claims say what fails, and why
    return True
