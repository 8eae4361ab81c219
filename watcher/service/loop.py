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
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from watcher import defaults, features
from watcher.config.registry import Registry
from watcher.config.settings import Settings
from watcher.defaults import WAIT_FLOW
from watcher.folders.claims import Claim, Processing
from watcher.folders.durable import TEMP_PREFIX
from watcher.folders.lock import FolderLock, Owner, read_owner
from watcher.folders.results import Result, dump, now_iso, publish, read_result
from watcher.jobs.model import Job, JobError
from watcher.jobs.reading import load_job
from watcher.jobs.submission import read_submission
from watcher.retry import retry
from watcher.running.contract import Runner, RunnerUnavailable, RunOutcome, RunRequest
from watcher.service.inbox import Inbox

__all__ = ["FolderError", "ServedElsewhere", "Service"]

logger = logging.getLogger(__name__)


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_TICK = 0.1  # seconds between settle checks while files wait to be complete
_RETRY_FIRST, _RETRY_MAX = 1.0, 30.0  # backoff when Prefect or the disk fails us


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
    ) -> None:
        """`registry`: the flows jobs may name, shared with the runner, which loads them at its
        start (default: the config's, never loaded: only wait jobs run)."""
        self.settings = settings
        self.runner = runner
        self.registry = registry or Registry(settings.flows, settings.files_dir)
        self.standby = standby
        self.lock = FolderLock(settings.inbox, settings.processing)
        self._stopping = threading.Event()  # for the standby's wait, which runs in a thread
        self.processing = Processing(settings.processing, settings.archive, settings.inbox)
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._signals = 0
        self._forced = False
        self._error: BaseException | None = None
        self._fatal: Exception | None = None  # the runner could not start
        self._main: asyncio.Task[None] | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[Any] | None] = set()  # claimed, no run slot yet

    # -- running in a thread, stopping from the main thread --------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or `request_stop`); return the exit status.

        0 after a graceful stop, `defaults.EXIT_INTERRUPTED` after a second signal.
        """
        thread = threading.Thread(target=self._thread_main, name="dropflow-service")
        previous = self._install_signal_handlers()
        try:
            thread.start()
            while thread.is_alive():
                # A timed join keeps the main thread waking up to run signal handlers.
                thread.join(0.2)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self._error is not None:
            raise self._error
        return defaults.EXIT_INTERRUPTED if self._forced else 0

    def _install_signal_handlers(self) -> dict[int, _Handler]:
        previous: dict[int, _Handler] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
            if signum is not None:
                previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        """Stop gracefully; a second call stops at once. Safe from any thread."""
        self._signals += 1
        self._stopping.set()
        if self._signals > 1:
            self._forced = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_stop)

    def _wake_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._forced:
            for task in self._job_tasks:
                task.cancel()
            if not self.started.is_set() and self._main is not None:
                self._main.cancel()  # still starting: give up

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as exc:  # handed to the main thread, which re-raises it
            if not (self._forced and isinstance(exc, asyncio.CancelledError)):
                self._error = exc
            self.started.set()

    # -- the service proper ----------------------------------------------------------------

    async def serve(self) -> None:
        """Recover, start the runner, watch the inbox, and process jobs until stopped."""
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[Path | Claim] = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_jobs)
        self._ready = asyncio.Event()  # the runner has started
        if self._signals:
            self._stop.set()

        s = self.settings
        await asyncio.to_thread(self._prepare_folders)
        if not await self._own_folders():
            logger.info("stopped before taking over")
            return
        try:
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
            self.lock.release()
        if self._fatal is not None:
            raise self._fatal
        logger.info("stopped")

    def _prepare_folders(self) -> None:
        s = self.settings
        for folder in (s.inbox, s.results, s.archive, s.processing):
            folder.mkdir(parents=True, exist_ok=True)
        # A claim is a link (or a rename) from the inbox into processing: atomic only within
        # one file system. Results and the archive may be anywhere.
        if os.stat(s.inbox).st_dev != os.stat(s.processing).st_dev:
            raise FolderError(
                f"inbox ({s.inbox}) and processing ({s.processing}) are on different file "
                "systems; a job is claimed by moving it from one to the other, which is atomic "
                "only within one file system: put processing beside the inbox"
            )

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
            if not await asyncio.to_thread(self.lock.wait, self._stopping):
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
        assert self._stop is not None
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
        try:
            await asyncio.to_thread(self.lock.record, replace(self._owner, api=description))
        except OSError as exc:  # only the owner's description: no reason to stop serving
            logger.warning("cannot record the runner in the folders' lock: %s", exc)
        self._ready.set()

    async def _dispatch(self) -> None:
        # Every file is claimed and read at once; only running its flow waits for a slot, so
        # a bad file gets its error result without queueing behind long jobs.
        while True:
            item = await self._queue.get()
            task = asyncio.create_task(self._handle(item))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._job_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("job handler failed", exc_info=task.exception())

    async def _drain(self) -> None:
        # Jobs still waiting for a run slot do not start now: they go back at once.
        for task in list(self._waiting):
            if task is not None:
                task.cancel()
        if self._job_tasks and not self._forced:
            grace = self.settings.shutdown_grace
            logger.info("waiting up to %gs for %d running job(s)", grace, len(self._job_tasks))
            await asyncio.wait(set(self._job_tasks), timeout=grace)
        for task in list(self._job_tasks):
            task.cancel()
        if self._job_tasks:
            await asyncio.wait(set(self._job_tasks))

    async def _tick(self) -> None:
        """Settle checks, health checks and periodic rescans."""
        next_scan = time.monotonic() + self.settings.rescan_interval
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.inbox.rescan_needed.wait(), _TICK)
            try:
                if not self.inbox.healthy():
                    logger.error("inbox %s or its watcher is gone: restarting", self.inbox.folder)
                    self.inbox.restart()
                elif self.inbox.rescan_needed.is_set() or time.monotonic() >= next_scan:
                    self.inbox.rescan_needed.clear()
                    next_scan = time.monotonic() + self.settings.rescan_interval
                    self.inbox.scan()
                elif self.inbox.pending:
                    self.inbox.check_all()
            except OSError as exc:
                logger.error("cannot watch inbox %s: %s; retrying", self.inbox.folder, exc)
                await asyncio.sleep(_RETRY_FIRST)

    # -- one job ---------------------------------------------------------------------------

    async def _handle(self, item: Path | Claim) -> None:
        if isinstance(item, Path):
            try:
                claim = await asyncio.to_thread(self.processing.claim, item)
            except PermissionError as exc:
                # Windows: the writer still has it open. It stays in the inbox; look again soon.
                logger.info("%s: not taken yet (%s); retrying", item.name, exc.strerror or exc)
                self._retry_inbox()
                return
            except OSError as exc:
                logger.error("cannot claim %s: %s; retrying", item.name, exc)
                self._retry_inbox()
                return
            finally:
                self.inbox.done(item)
            if claim is None:
                return
        else:
            claim = item
        if claim.staged_result.exists():
            await self._complete(claim, None)
            return
        try:
            outcome = await self._run(claim)
        except asyncio.CancelledError:
            if not self._forced:
                await asyncio.to_thread(self.processing.release, claim)
                logger.info("%s: interrupted by the stop, left for the next start", claim.name)
            raise
        # From here on the outcome is known: finish even if a stop is requested meanwhile.
        await asyncio.shield(self._complete(claim, outcome))

    def _retry_inbox(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(_RETRY_FIRST, self.inbox.rescan_needed.set)

    async def _run(self, claim: Claim) -> Result:
        started_at, t0 = now_iso(), time.monotonic()
        base: Result = {
            "job": claim.name,
            "status": "error",
            "message": "",
            "claim_id": claim.id,
            "attempt": claim.attempt,
        }
        # `dropflow submit --wait` finds its own result by this id (see watcher.jobs.submission).
        submission = await asyncio.to_thread(
            read_submission, claim.path, self.settings.max_job_bytes
        )
        if submission:
            base["submission"] = submission
        # A deployment's flow runs live on workers: a restart re-attaches to them instead of
        # running the job again, so restarts are not attempts there (the runner counts its own).
        if claim.attempt > self.settings.max_attempts and self.settings.runner != "deployment":
            outcome = RunOutcome(
                "error",
                f"The service stopped while this job was running {claim.attempt - 1} times; "
                "it is not tried again.",
            )
            return self._result(base, None, outcome, started_at, t0)
        try:
            job = await self._load(claim)
        except JobError as exc:
            outcome = RunOutcome("error", f"{claim.name}: {exc}")
            return self._result(base, None, outcome, started_at, t0)
        except Exception as exc:  # a bug must cost one error result, not a stuck claim
            logger.exception("%s: reading the job failed", claim.name)
            outcome = RunOutcome("error", f"{claim.name}: internal error reading it: {exc}")
            return self._result(base, None, outcome, started_at, t0)
        # A file name need not be valid UTF-8; Prefect's names must be.
        stem = os.fsencode(Path(claim.name).stem).decode("utf-8", "replace")
        me = asyncio.current_task()
        self._waiting.add(me)
        try:
            await self._ready.wait()
            # The runner has loaded the registry: the flow's own parameters are checked now,
            # before the job waits for a slot.
            try:
                parameters = self._parameters(job)
            except JobError as exc:
                outcome = RunOutcome("error", f"{claim.name}: {exc}")
                return self._result(base, job, outcome, started_at, t0)
            await self._slots.acquire()
        finally:
            self._waiting.discard(me)
        request = RunRequest(
            claim.id,
            job.name or stem,
            job.timeout,
            job.sleep,
            claim.attempt,
            flow=job.flow,
            parameters=parameters,
        )
        if self._stop is not None and self._stop.is_set():
            # Stopping: no flow starts now, even for a job that reached its slot just now.
            self._slots.release()
            raise asyncio.CancelledError
        try:
            started_at, t0 = now_iso(), time.monotonic()
            logger.info(
                "job started: %s (claim %s, attempt %d, flow %s, timeout %gs%s)",
                claim.name,
                claim.id,
                claim.attempt,
                job.flow,
                job.timeout,
                f", sleep {job.sleep}" if job.flow == WAIT_FLOW else "",
            )
            outcome = await self._run_with_retries(claim, request)
        finally:
            self._slots.release()
        return self._result(base, job, outcome, started_at, t0)

    async def _run_with_retries(self, claim: Claim, request: RunRequest) -> RunOutcome:
        try:
            return await retry(
                lambda: self.runner.run(request),
                on=RunnerUnavailable,
                first=_RETRY_FIRST,
                most=_RETRY_MAX,
                before_wait=lambda exc, delay: logger.warning(
                    "%s: %s; retrying in %gs", claim.name, exc, delay
                ),
            )
        except Exception as exc:
            logger.exception("%s: the runner failed", claim.name)
            return RunOutcome("error", f"Internal error while running the job: {exc}")

    def _parameters(self, job: Job) -> dict[str, Any]:
        if job.flow != WAIT_FLOW and not self.registry.loaded:
            raise JobError(
                f"flow: runner: {self.settings.runner} runs only the wait flow, not '{job.flow}'"
            )
        return self.registry.parameters(job)

    async def _load(self, claim: Claim) -> Job:
        """The claim's job; an I/O error (not the file's fault) is retried a few times."""
        for delay in (_RETRY_FIRST, 2 * _RETRY_FIRST, 4 * _RETRY_FIRST, None):
            try:
                return await asyncio.to_thread(load_job, claim.path, self.settings.job_limits)
            except OSError as exc:
                if delay is None:
                    raise JobError(f"could not be read: {exc.strerror or exc}") from exc
                logger.warning("%s: cannot read it (%s); retrying in %gs", claim.name, exc, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _result(
        base: Result, job: Job | None, outcome: RunOutcome, started_at: str, t0: float
    ) -> Result:
        result: Result = {**base, "status": outcome.status, "message": outcome.message}
        if job is not None:
            result["flow"] = job.flow
            if job.name:
                result["name"] = job.name
            if outcome.sleep is not None:
                result["sleep"] = outcome.sleep
            result["timeout"] = job.timeout
        result["started_at"] = started_at
        result["finished_at"] = now_iso()
        result["duration_s"] = round(time.monotonic() - t0, 3)
        if outcome.flow_run_id:
            result["flow_run_id"] = outcome.flow_run_id
        if outcome.flow_run_name:
            result["flow_run_name"] = outcome.flow_run_name
        if outcome.flow_run_url:
            result["flow_run_url"] = outcome.flow_run_url
        if outcome.work_pool:
            result["work_pool"] = outcome.work_pool
        if outcome.worker:
            result["worker"] = outcome.worker
        if outcome.returned:
            result["return_value"] = outcome.return_value
        elif outcome.return_note:
            result["return_note"] = outcome.return_note
        return result

    async def _complete(self, claim: Claim, result: Result | None) -> None:
        """Stage, publish and archive; retried with backoff while the disk fails us."""
        path, status = await retry(
            lambda: asyncio.to_thread(self._complete_sync, claim, result),
            on=OSError,
            first=_RETRY_FIRST,
            most=_RETRY_MAX,
            before_wait=lambda exc, delay: logger.error(
                "%s: cannot write its result (%s); the job stays claimed, retrying in %gs",
                claim.name,
                exc,
                delay,
            ),
        )
        duration = result.get("duration_s", 0.0) if result else 0.0
        flow_run = result.get("flow_run_name", "-") if result else "-"
        logger.info(
            "job finished: %s %s in %.2fs (flow run %s) -> %s",
            claim.name,
            status,
            duration,
            flow_run,
            path.name,
        )

    def _complete_sync(self, claim: Claim, result: Result | None) -> tuple[Path, str]:
        """Stage, publish, archive: each step done once, each safe to repeat after a failure.

        Publishing is recorded in the claim (`Processing.mark_published`), so a failure while
        archiving (a full or missing archive disk) is retried without publishing again.
        """
        fresh = result is not None and not claim.staged_result.exists()
        if fresh:
            assert result is not None
            self.processing.stage(claim, dump(result))
        staged = read_result(claim.staged_result) or {}
        path = self.processing.published_as(claim, self.settings.results)
        if path is None:
            path = publish(
                self.settings.results,
                claim.staged_result,
                claim.name or str(staged.get("job", "job")),
                claim.id,
                recovering=not fresh,
            )
            self.processing.mark_published(claim, path)
        self.processing.finish(claim)
        return path, str(staged.get("status", "?"))
