"""One job, from its file to its result: claim, run (or refuse), stage, publish, archive.

`JobPipeline.handle` reads top to bottom:

1. claim the file (a `Claim` found at recovery is already claimed);
2. a claim whose result is already staged (the service stopped after the run) is only
   published: it never runs twice;
3. otherwise run it, or refuse it with an error result: past the attempt cap, a job file that
   cannot be read or checked, parameters the flow does not take;
4. stage the result in the claim, publish it to the results folder, add its line to the
   route's ledger (`watcher.folders.ledger`, for `dropflow status`), archive the job file.

`duration_s` in a result is `finished_at - started_at`: for a job that ran, from the moment it
got its run slot; for a refused job, from the moment its claim was taken up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watcher import features
from watcher.config.registry import Registry
from watcher.config.settings import Settings
from watcher.defaults import WAIT_FLOW
from watcher.folders.claims import Claim, ClaimStore
from watcher.folders.ledger import Ledger
from watcher.folders.results import Result, dump, now_iso, publish, read_result
from watcher.jobs.messages import one_line
from watcher.jobs.model import Job, JobError
from watcher.jobs.reading import load_job
from watcher.jobs.submission import read_tags
from watcher.retry import retry
from watcher.running.contract import Runner, RunnerUnavailable, RunOutcome, RunRequest
from watcher.service.backoff import ClaimBackoff
from watcher.service.gate import RunGate
from watcher.service.inbox import Inbox
from watcher.service.vitals import JobSeen, Vitals

__all__ = ["RETRY_FIRST", "RETRY_MAX", "JobPipeline"]

# One logger name for all of the service's lines, as docs/service.md shows them.
logger = logging.getLogger("watcher.service.loop")

RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # backoff when Prefect or the disk fails us
_READ_RETRIES = 3  # an unreadable job file is read again this many times, then refused


class JobPipeline:
    """Takes one inbox file (or recovered claim) at a time through to its result."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        registry: Registry,
        processing: ClaimStore,
        *,
        inbox: Inbox,
        gate: RunGate,
        forced: Callable[[], bool],
        vitals: Vitals | None = None,
    ) -> None:
        """`gate`: the runner's readiness, the run slots and the stop; `forced()`: whether the
        stop is forced (a second signal); `vitals`: told each job's steps (received, started,
        finished), for the health, metrics and events."""
        self.settings = settings
        self.runner = runner
        self.registry = registry
        self.processing = processing
        self.inbox = inbox
        self.gate = gate
        self.forced = forced
        self.vitals = vitals or Vitals([settings.route.name])
        self.claims = ClaimBackoff(RETRY_FIRST, RETRY_MAX)
        self.ledger = Ledger(settings.processing, settings.route.name)
        self._claims_timer: asyncio.TimerHandle | None = None

    async def handle(self, item: Path | Claim) -> None:
        """Claim, run or refuse, stage, publish, archive."""
        claim = await self._claim(item) if isinstance(item, Path) else item
        if claim is None:
            return
        mtime_ns = await asyncio.to_thread(_mtime_ns, claim.path)  # its place in `oldest` order
        seen = JobSeen(
            self.settings.route.name,
            claim.id,
            claim.name,
            claim.relative,
            mtime_ns / 1e9 if mtime_ns else None,
            recovered=not isinstance(item, Path),
        )
        self.vitals.received(seen)
        try:
            await self._handle(claim, seen, mtime_ns)
        finally:
            self.vitals.forget(seen)  # a no-op once it finished

    async def _handle(self, claim: Claim, seen: JobSeen, mtime_ns: int) -> None:
        if claim.staged_result.exists():
            await self._complete(claim, None, seen)
            return
        try:
            outcome = await self._run(claim, seen, mtime_ns)
        except asyncio.CancelledError:
            if not self.forced():
                await self._leave_claimed(claim)
            raise
        if outcome is None:
            await self._leave_claimed(claim)
            return
        # From here on the outcome is known: finish even if a stop is requested meanwhile.
        await asyncio.shield(self._complete(claim, outcome, seen))

    # -- claim -----------------------------------------------------------------------------

    async def _leave_claimed(self, claim: Claim) -> None:
        try:
            await asyncio.to_thread(self.processing.release, claim)
        except OSError as exc:  # processing is gone (the service stops for it)
            logger.warning(
                "%s: interrupted by the stop, and cannot be put back (%s): it stays claimed "
                "in %s, for the next start there",
                claim.name,
                exc,
                claim.folder,
            )
            return
        logger.info("%s: interrupted by the stop, left for the next start", claim.name)

    async def _claim(self, path: Path) -> Claim | None:
        try:
            if self.claims.wait() > 0:
                # Claims are failing: the file stays in the inbox until the next try.
                self._retry_claims()
                return None
            claim = await asyncio.to_thread(self.processing.claim, path)
        except OSError as exc:
            if _writer_holds_it(exc):
                # It stays in the inbox; look again soon.
                logger.info("%s: not taken yet (%s); retrying", path.name, exc.strerror or exc)
                self._retry_inbox()
                return None
            if self.claims.failed(exc):
                logger.error(
                    "cannot claim %s: %s; jobs stay in the inbox and claims are tried again "
                    "in %gs, then less often (up to every %gs), logged again when this changes",
                    path.name,
                    exc,
                    self.claims.delay,
                    self.claims.most,
                )
            self._retry_claims()
            return None
        finally:
            self.inbox.done(path)
        failures = self.claims.worked()
        if failures:
            logger.warning("claims work again (after %d failed tries)", failures)
        return claim

    def _retry_inbox(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(RETRY_FIRST, self.inbox.rescan_needed.set)

    def _retry_claims(self) -> None:
        """Rescan the inbox once claims may be tried again (one timer for all files)."""
        if self._claims_timer is None:
            loop = asyncio.get_running_loop()
            self._claims_timer = loop.call_later(self.claims.wait(), self._claims_due)

    def _claims_due(self) -> None:
        self._claims_timer = None
        self.inbox.rescan_needed.set()

    # -- run, or refuse --------------------------------------------------------------------

    async def _run(self, claim: Claim, seen: JobSeen, mtime_ns: int) -> Result | None:
        """The job's result, or None when the service stopped before its flow could start."""
        started_at, t0 = now_iso(), time.monotonic()
        base = await self._base(claim)
        # A deployment's flow runs live on workers: a restart re-attaches to them instead of
        # running the job again, so restarts are not attempts there (the runner counts its own).
        if claim.attempt > self.settings.max_attempts and self.settings.runner != "deployment":
            outcome = RunOutcome(
                "error",
                f"The service stopped while this job was running {claim.attempt - 1} times; "
                "it is not tried again.",
            )
            return result_of(base, None, outcome, started_at, t0)
        try:
            _check_subfolder(claim.subfolder)
            job = await self._load(claim)
        except JobError as exc:
            outcome = RunOutcome("error", f"{claim.name}: {exc}")
            return result_of(base, None, outcome, started_at, t0)
        except Exception as exc:  # a bug must cost one error result, not a stuck claim
            logger.exception("%s: reading the job failed", claim.name)
            outcome = RunOutcome("error", f"{claim.name}: internal error reading it: {exc}")
            return result_of(base, None, outcome, started_at, t0)
        # A file name need not be valid UTF-8; Prefect's names must be.
        stem = os.fsencode(Path(claim.name).stem).decode("utf-8", "replace")
        me = asyncio.current_task()
        self.gate.waiting.add(me)
        try:
            await self.gate.ready.wait()
            # The runner has loaded the registry: the flow's own parameters are checked now,
            # before the job waits for a slot.
            try:
                parameters = self._parameters(job)
            except JobError as exc:
                outcome = RunOutcome("error", f"{claim.name}: {exc}")
                return result_of(base, job, outcome, started_at, t0)
            # Stopping: no flow starts now, even for a job that reached its slot just now.
            if not await self.gate.take_slot(claim.relative, mtime_ns):
                return None
        finally:
            self.gate.waiting.discard(me)
        request = RunRequest(
            claim.id,
            job.name or stem,
            job.timeout,
            job.sleep,
            claim.attempt,
            flow=job.flow,
            parameters=parameters,
            route=self.settings.route.name,
            deployment=self.settings.route.deployment,
            work_queue=self.settings.route.work_queue,
        )
        try:
            started_at, t0 = now_iso(), time.monotonic()  # a job that runs: from its slot
            logger.info(
                "job started: %s (claim %s, attempt %d, flow %s, timeout %gs%s)",
                claim.name,
                claim.id,
                claim.attempt,
                job.flow,
                job.timeout,
                f", sleep {job.sleep}" if job.flow == WAIT_FLOW else "",
            )
            self.vitals.started(seen, job.flow)
            outcome = await self._run_with_retries(claim, request)
        finally:
            self.gate.leave()
        return result_of(base, job, outcome, started_at, t0)

    async def _base(self, claim: Claim) -> Result:
        """The fields every result of this claim has."""
        base: Result = {
            "job": claim.name,
            "status": "error",
            "message": "",
            "route": self.settings.route.name,
            "claim_id": claim.id,
            "attempt": claim.attempt,
        }
        if claim.subfolder:
            base["subfolder"] = claim.subfolder
        # `dropflow submit --wait` finds its own result by its id, and `dropflow retry` names
        # the result it retries (see watcher.jobs.submission).
        tags = await asyncio.to_thread(read_tags, claim.path, self.settings.max_job_bytes)
        if tags.submission:
            base["submission"] = tags.submission
        if tags.retry_of:
            base["retry_of"] = tags.retry_of
        return base

    async def _load(self, claim: Claim) -> Job:
        """The claim's job; an I/O error (not the file's fault) is retried a few times."""
        try:
            return await retry(
                lambda: asyncio.to_thread(load_job, claim.path, self.settings.job_limits),
                on=OSError,
                first=RETRY_FIRST,
                most=RETRY_MAX,
                before_wait=lambda exc, delay: logger.warning(
                    "%s: cannot read it (%s); retrying in %gs", claim.name, exc, delay
                ),
                tries=1 + _READ_RETRIES,
            )
        except OSError as exc:
            raise JobError(f"could not be read: {exc.strerror or exc}") from exc

    def _parameters(self, job: Job) -> dict[str, Any]:
        if job.flow != WAIT_FLOW and not self.registry.loaded:
            raise JobError(
                f"flow: runner: {self.settings.runner} runs only the wait flow, not '{job.flow}'"
            )
        return self.registry.parameters(job)

    async def _run_with_retries(self, claim: Claim, request: RunRequest) -> RunOutcome:
        """Run the job until the runner gives an outcome. While the runner is down (its server
        being healed) the job waits for it, and runs again at once when it is back; other
        unavailability backs off (`RETRY_FIRST` doubling to `RETRY_MAX`). Not `retry`: the
        wait must end early when the runner's health changes."""
        delay = RETRY_FIRST
        while True:
            if not self.gate.ready.is_set():
                logger.warning(
                    "%s: waiting for the runner: %s", claim.name, self.gate.health.reason
                )
                await self.gate.ready.wait()
                delay = RETRY_FIRST
            try:
                return await self.runner.run(request)
            except RunnerUnavailable as exc:
                if not self.gate.ready.is_set():
                    continue  # down meanwhile: wait for it above
                logger.warning("%s: %s; retrying in %gs", claim.name, exc, delay)
                await self.gate.health.changed(delay)  # going down ends the wait early
                delay = min(delay * 2, RETRY_MAX)
            except Exception as exc:
                logger.exception("%s: the runner failed", claim.name)
                return RunOutcome("error", f"Internal error while running the job: {exc}")

    # -- stage, publish, archive -----------------------------------------------------------

    async def _complete(self, claim: Claim, result: Result | None, seen: JobSeen) -> None:
        """Stage, publish and archive; retried with backoff while the disk fails us, logged
        when the error starts or changes and when the write works again, not at every try."""
        errors: list[str] = []

        def before_wait(exc: BaseException, delay: float) -> None:
            if errors and errors[-1] == str(exc):
                return
            errors.append(str(exc))
            logger.error(
                "%s: cannot write its result (%s); the job stays claimed, retrying in %gs, "
                "then less often (up to every %gs), logged again when this changes",
                claim.name,
                exc,
                delay,
                RETRY_MAX,
            )

        path, staged = await retry(
            lambda: asyncio.to_thread(self._complete_sync, claim, result),
            on=OSError,
            first=RETRY_FIRST,
            most=RETRY_MAX,
            before_wait=before_wait,
        )
        if errors:
            logger.warning("%s: its result could be written again", claim.name)
        self.vitals.finished(seen, staged)
        status = staged.get("status", "?")
        if result is None:  # its run ended before the service stopped: nothing ran now
            flow_run = staged.get("flow_run_name")
            logger.info(
                "job finished: %s %s (published a result staged before the restart%s) -> %s",
                claim.name,
                status,
                f"; flow run {flow_run}" if flow_run else "",
                path.name,
            )
            return
        logger.info(
            "job finished: %s %s in %.2fs (flow run %s) -> %s",
            claim.name,
            status,
            result.get("duration_s", 0.0),
            result.get("flow_run_name", "-"),
            path.name,
        )

    def results_folder(self, claim: Claim) -> Path:
        """Where the claim's result goes: the route's results, or the same relative folder in
        it as the job's in the inbox."""
        results = self.settings.results
        return results / claim.subfolder if claim.subfolder else results

    def _complete_sync(self, claim: Claim, result: Result | None) -> tuple[Path, dict[str, Any]]:
        """Stage, publish, archive: each step done once, each safe to repeat after a failure.

        Publishing is recorded in the claim (`ClaimStore.mark_published`), so a failure while
        archiving (a full or missing archive disk) is retried without publishing again.
        """
        fresh = result is not None and not claim.staged_result.exists()
        if fresh:
            assert result is not None
            self.processing.stage(claim, dump(result))
        staged = read_result(claim.staged_result) or {}
        results = self.results_folder(claim)
        path = self.processing.published_as(claim, results)
        if path is None:
            if claim.subfolder:
                # Recreated as the inbox's subfolder is: the same relative folder.
                results.mkdir(parents=True, exist_ok=True)
            path = publish(
                results,
                claim.staged_result,
                claim.name or str(staged.get("job", "job")),
                claim.id,
                recovering=not fresh,
            )
            self.processing.mark_published(claim, path)
        # Before the claim is finished: a crash before this line re-appends it at recovery.
        relative = f"{claim.subfolder}/{path.name}" if claim.subfolder else path.name
        self.ledger.append(path, relative, claim.id, staged)
        self.processing.finish(claim)
        return path, staged


def _check_subfolder(subfolder: str) -> None:
    """Refuse a job whose subfolder's name is not printable UTF-8 text: Prefect's names, the
    result's `subfolder` and the logs need text (its result still goes to the same relative
    folder, under the same bytes)."""
    if not subfolder:
        return
    try:
        subfolder.encode("utf-8")
    except UnicodeEncodeError:
        raise JobError(
            f"the subfolder {one_line(subfolder)!r} has a name that is not UTF-8 text; rename "
            "the folder (its jobs are kept: this one is archived beside its result)"
        ) from None
    if not all(ch.isprintable() for ch in subfolder):
        raise JobError(
            f"the subfolder {one_line(subfolder)!r} has a name with control characters; rename "
            "the folder (its jobs are kept: this one is archived beside its result)"
        )


def _mtime_ns(path: Path) -> int:
    """The job file's mtime, which orders a route's jobs; 0 if it cannot be read."""
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0


def _writer_holds_it(exc: OSError) -> bool:
    """Whether a claim failed because the file's writer still has it open (Windows refuses to
    move such a file: a sharing violation), rather than for the folders' sake."""
    if not isinstance(exc, PermissionError) or features.current().open_files_move:
        return False
    # ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION; elsewhere only the portable mode's
    # simulation (`features.ensure_movable`) refuses.
    return os.name != "nt" or getattr(exc, "winerror", None) in (32, 33)


def result_of(
    base: Result, job: Job | None, outcome: RunOutcome, started_at: str, t0: float
) -> Result:
    """The result file's fields; `t0` is the monotonic clock at `started_at`."""
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
