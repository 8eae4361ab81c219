"""`DeploymentRunner`: each job becomes a flow run of the wait flow's deployment, run by workers.

The watcher creates the flow run (`idempotency_key` = the claim id, named after the job at
creation) and waits for its final state; Prefect workers on the work pool, on this machine or
others, run it. The same key returns the same flow run, so a watcher restarted after a crash
re-attaches to the runs it had created instead of starting new ones. A run that fails or
crashes is run again under the next key (`<claim id>.2`, `.3`, ...), up to `max_attempts` runs,
and those keys too are found again after a restart: the keys depend on the claim only.

Waiting: one event subscription (the flow-run events of the deployment) gives each run's state
as it changes; a run is read when its event says it finished, or when a deadline timed from
those states may be due. While the subscription is down, one query for every run in flight asks
every `FINISHED_POLL` which have finished. A full read every `CHECK_INTERVAL` catches whatever
the events missed. Measured on a PostgreSQL-backed server (2 cores, 200 runs in flight, none
changing, 30 s windows): the server used 2.1 % of a core with no watcher, 2.5 % with the
subscription, 5.1 % polling every 0.25 s for finished runs.

The outcome comes from the final state alone: with results not persisted, a flow's return
value cannot be read from another process, and the wait flow puts its sentence in the state's
message. The seconds of work are drawn here, so that the flow run's parameters say them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from flows.wait import draw_sleep
from watcher import defaults
from watcher.config.registry import Registry
from watcher.running.contract import (
    FLOW_RUN_TAG,
    RunnerUnavailable,
    RunOutcome,
    RunRequest,
    stopped_message,
)
from watcher.running.deployment.registration import deployment_name
from watcher.server import prefect_internals as internals

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

__all__ = [
    "CHECK_INTERVAL",
    "FINISHED_POLL",
    "PENDING_LIMIT",
    "WAITING_LOG_INTERVAL",
    "DeploymentRunner",
]

logger = logging.getLogger(__name__)

FINISHED_POLL = 0.25
"""While the event subscription is down: seconds between the queries that ask which runs in
flight have finished (one query for all of them, answered with the finished ones only)."""

CHECK_INTERVAL = 30.0
"""Seconds between full reads of the runs in flight: what the events missed, and, while they
are down, the runs waiting for a worker or lost with theirs. With the events up, those
deadlines are timed from the states the events give, and only a run that may be due is read."""

WAITING_LOG_INTERVAL = 60.0
"""Seconds between the log lines that count the jobs waiting for a worker."""

PENDING_LIMIT = 300.0
"""Seconds a flow run may stay Pending (a worker took it, its process has not started the flow)
before it is taken as lost with its worker. Starting the process takes seconds, more on a busy
machine (up to 24 s measured with 8 at once on 2 cores): far below this."""

_PAGE = 200  # flow run ids per query
_FINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
_Verdict = Literal["final", "not_started", "lost", "timed_out"]
NO_RETURN = (
    "not readable with runner: deployment: the flow ran on a worker, and its result is not "
    "persisted"
)
"""The result's `return_note` for a completed flow run of a flow other than wait."""


@dataclass
class _Watch:
    """One flow run the runner waits for."""

    timeout: float
    created: float
    done: asyncio.Future[tuple[FlowRun, _Verdict]]
    state: str | None = None
    since: float = field(default_factory=time.monotonic)
    start_timeout: bool = True
    stop_at_timeout: bool = False
    """The flow does not end itself at its timeout (any flow but wait): the runner cancels
    it, counting from the run's start."""


class DeploymentRunner:
    """Runs each job as a flow run of its flow's deployment on the work pool `work_pool`.

    Args:
        deployment: `wait/<deployment name>`, registered by `dropflow deploy`; another flow's
            deployment is `<its Prefect name>/<deployment name>`.
        work_pool: The work pool the deployment runs on (named in messages).
        max_attempts: Flow runs a job gets when they fail or crash, before an error result.
        start_timeout: Seconds a flow run may wait for a worker; None waits for ever.
        lost_run_margin: Seconds past its timeout after which a flow run still running is
            taken as lost with its worker, marked Crashed and run again (`PENDING_LIMIT` for a
            run still pending).
    """

    def __init__(
        self,
        deployment: str,
        work_pool: str,
        *,
        max_attempts: int,
        start_timeout: float | None,
        lost_run_margin: float,
        check_interval: float = CHECK_INTERVAL,
        waiting_log_interval: float = WAITING_LOG_INTERVAL,
        registry: Registry | None = None,
    ) -> None:
        self.registry = registry or Registry(defaults.FLOWS, Path(defaults.FILES_DIR))
        self.deployment = deployment
        self.work_pool = work_pool
        self.max_attempts = max_attempts
        self.start_timeout = start_timeout
        self.lost_run_margin = lost_run_margin
        self._check_interval = check_interval
        self._waiting_log_interval = waiting_log_interval
        self._deployment_ids: dict[str, UUID] = {}  # by registered flow name
        self._watched: dict[UUID, _Watch] = {}
        self._clients = contextlib.AsyncExitStack()
        self._client: PrefectClient | None = None
        self._poller: asyncio.Task[None] | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = False
        self._wake = asyncio.Event()
        self._named: set[UUID] = set()  # runs the events said finished, to read

    async def start(self) -> str:
        from prefect.client.orchestration import get_client

        # Every registered flow, once (its parameter schema checks jobs before any run).
        await asyncio.to_thread(self.registry.load)
        self._client = await self._clients.enter_async_context(get_client())
        url = str(self._client.api_url)
        if await self._client.api_healthcheck() is None:
            await self._find_deployment(self.registry.names[0])
        else:
            logger.warning("Prefect API at %s is not answering yet; jobs will wait", url)
        self._poller = asyncio.create_task(self._poll())
        self._subscriber = asyncio.create_task(self._subscribe())
        return f"deployment {self.deployment} on work pool {self.work_pool}, Prefect API at {url}"

    async def close(self) -> None:
        # Runs on workers go on: a restart re-attaches to them through their keys.
        for task in (self._poller, self._subscriber):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._clients.aclose()

    async def run(self, request: RunRequest) -> RunOutcome:
        try:
            return await self._run(request)
        except (RunnerUnavailable, asyncio.CancelledError):
            raise
        except Exception as exc:
            if await self._api_down():
                raise RunnerUnavailable(f"Prefect API unavailable ({exc!r})") from exc
            raise

    async def _run(self, request: RunRequest) -> RunOutcome:
        deployment_id = await self._find_deployment(request.flow)
        client = self._api()
        wait = request.flow == defaults.WAIT_FLOW
        if wait:
            parameters: dict[str, Any] = {
                "timeout": request.timeout,
                "sleep": draw_sleep(request.sleep),
                "name": request.label,
            }
        else:
            parameters = dict(request.parameters)
        failed: FlowRun | None = None
        for attempt in range(1, self.max_attempts + 1):
            key = request.claim_id if attempt == 1 else f"{request.claim_id}.{attempt}"
            flow_run = await client.create_flow_run_from_deployment(
                deployment_id,
                parameters=parameters,
                name=request.label,
                tags=[FLOW_RUN_TAG],
                idempotency_key=key,
            )
            flow_run, verdict = await self._wait(flow_run, request.timeout, stop=not wait)
            if verdict == "timed_out":
                message = stopped_message(request.flow, request.timeout)
                await self._cancel(flow_run, message)
                worker = await self._find_worker(flow_run)
                return self._outcome(flow_run, "canceled", message, worker)
            if verdict == "not_started":
                return self._outcome(
                    flow_run,
                    "error",
                    f"No worker on work pool '{self.work_pool}' started the flow run within "
                    f"{self.start_timeout:g} s (start_timeout); it was cancelled.",
                )
            if verdict == "lost":
                logger.warning(
                    "%s: flow run %s (%s) ran %gs past its timeout with no final state: its "
                    "worker is taken as lost; marked Crashed",
                    request.label,
                    flow_run.name,
                    flow_run.id,
                    self.lost_run_margin,
                )
                failed = await self._mark_crashed(flow_run)
                continue
            state = flow_run.state
            assert state is not None
            if state.is_completed() or state.is_cancelled():
                worker = await self._find_worker(flow_run)
                status: Literal["completed", "canceled"] = (
                    "completed" if state.is_completed() else "canceled"
                )
                outcome = self._outcome(flow_run, status, state.message or str(state.name), worker)
                if status == "completed" and not wait:
                    return dataclasses.replace(outcome, return_note=NO_RETURN)
                return outcome
            logger.warning(
                "%s: flow run %s ended %s (%s); attempt %d of %d",
                request.label,
                flow_run.name,
                state.name,
                state.message,
                attempt,
                self.max_attempts,
            )
            failed = flow_run
        assert failed is not None and failed.state is not None
        return self._outcome(
            failed,
            "error",
            f"The flow run ended {failed.state.name} {self.max_attempts} time(s): "
            f"{failed.state.message or 'no message'}",
        )

    def _outcome(
        self,
        flow_run: FlowRun,
        status: Literal["completed", "canceled", "error"],
        message: str,
        worker: str | None = None,
    ) -> RunOutcome:
        sleep = flow_run.parameters.get("sleep")
        return RunOutcome(
            status=status,
            message=message,
            sleep=float(sleep) if isinstance(sleep, int | float) else None,
            flow_run_id=str(flow_run.id),
            flow_run_name=flow_run.name,
            work_pool=flow_run.work_pool_name or self.work_pool,
            worker=worker,
        )

    # -- waiting ---------------------------------------------------------------------------

    async def _wait(
        self, flow_run: FlowRun, timeout: float, *, stop: bool = False
    ) -> tuple[FlowRun, _Verdict]:
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run, "final"
        watch = _Watch(
            timeout=timeout,
            created=time.monotonic(),
            done=asyncio.get_running_loop().create_future(),
            state=flow_run.state.type.value if flow_run.state else None,
            stop_at_timeout=stop,
        )
        self._watched[flow_run.id] = watch
        try:
            while True:
                flow_run, verdict = await asyncio.shield(watch.done)
                if verdict != "not_started" or await self._cancel_unstarted(flow_run):
                    break
                # A worker took it just now: wait for it like any other.
                watch.start_timeout = False
                watch.done = asyncio.get_running_loop().create_future()
        finally:
            del self._watched[flow_run.id]
        return flow_run, verdict

    async def _poll(self) -> None:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        finals = FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType(t) for t in _FINAL])
        )
        next_check = time.monotonic()
        next_log = time.monotonic() + self._waiting_log_interval
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FINISHED_POLL)
            self._wake.clear()
            now = time.monotonic()
            live = [i for i, w in self._watched.items() if not w.done.done()]
            named, self._named = self._named, set()
            state: FlowRunFilterState | None = None
            if not live:
                continue
            if now >= next_check:
                ids = live  # everything, in full: missed events, the waiting count
            elif self._subscribed:
                # The events said which runs finished; the clock says which may be due.
                due = {i for i in live if self._due(self._watched[i], now)}
                ids = [i for i in live if i in named or i in due]
            else:
                ids, state = live, finals
            if not ids:
                continue
            try:
                for start in range(0, len(ids), _PAGE):
                    page = ids[start : start + _PAGE]
                    runs = await self._api().read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page), state=state),
                        limit=len(page),
                    )
                    for run in runs:
                        self._observe(run, time.monotonic())
            except Exception as exc:
                if not failing:
                    logger.warning("cannot read flow runs (%r); retrying", exc)
                failing = True
                self._named |= named
                continue
            failing = False
            if ids is live and state is None:
                next_check = now + self._check_interval
            if now >= next_log:
                next_log = now + self._waiting_log_interval
                self._log_waiting()

    def _due(self, watch: _Watch, now: float) -> bool:
        """Whether, by the states the events gave, a verdict may be due for this run."""
        if watch.state == "SCHEDULED":
            return (
                watch.start_timeout
                and self.start_timeout is not None
                and now - watch.created > self.start_timeout
            )
        if watch.state == "RUNNING" and watch.stop_at_timeout:
            return now - watch.since >= watch.timeout
        if watch.state in ("RUNNING", "CANCELLING"):
            return now - watch.since > watch.timeout + self.lost_run_margin
        return watch.state == "PENDING" and now - watch.since > PENDING_LIMIT

    async def _subscribe(self) -> None:
        from prefect.events.clients import get_events_subscriber

        while True:
            try:
                for flow in self.registry.names:
                    # A flow not deployed yet is subscribed to once a job finds it.
                    with contextlib.suppress(RunnerUnavailable):
                        await self._find_deployment(flow)
                if not self._deployment_ids:
                    raise RunnerUnavailable("no deployment of the registered flows found")
                events = get_events_subscriber(
                    filter=internals.flow_run_events(*self._deployment_ids.values())
                )
                async with events:
                    self._subscribed = True
                    self._named |= set(self._watched)  # whatever changed before
                    self._wake.set()
                    async for event in events:
                        self._saw(event.resource.id, event.payload)
            except Exception as exc:
                logger.warning("no flow-run events (%r): polling until they come back", exc)
            finally:
                self._subscribed = False
            await asyncio.sleep(FINISHED_POLL * 20)

    def _saw(self, resource: str, payload: dict[str, Any]) -> None:
        """A flow-run state event: note the run's state; a final one is read at once."""
        run_id = internals.event_flow_run_id(resource)
        state = internals.event_state_type(payload)
        if run_id is None or state is None or run_id not in self._watched:
            return
        watch = self._watched[run_id]
        if state != watch.state:
            watch.state, watch.since = state, time.monotonic()
            if state == "RUNNING" and watch.stop_at_timeout:
                # Read the run at its deadline, not at the next poll.
                asyncio.get_running_loop().call_later(watch.timeout, self._wake.set)
        if state in _FINAL:
            self._named.add(run_id)
            self._wake.set()

    def _observe(self, run: FlowRun, now: float) -> None:
        watch = self._watched.get(run.id)
        if watch is None or watch.done.done() or run.state is None:
            return
        state = run.state
        if state.type.value != watch.state:
            watch.state, watch.since = state.type.value, now
        if state.is_final():
            watch.done.set_result((run, "final"))
        elif state.is_scheduled():
            if (
                watch.start_timeout
                and self.start_timeout is not None
                and now - watch.created > self.start_timeout
            ):
                watch.done.set_result((run, "not_started"))
        elif state.is_running() and watch.stop_at_timeout:
            # Counted on this machine's clock from when the run was seen running (its event),
            # never early whatever the server's clock says.
            if now - watch.since >= watch.timeout:
                watch.done.set_result((run, "timed_out"))
        elif state.is_running() or state.is_cancelling():
            if now - watch.since > watch.timeout + self.lost_run_margin:
                watch.done.set_result((run, "lost"))
        elif state.is_pending() and now - watch.since > PENDING_LIMIT:
            watch.done.set_result((run, "lost"))

    def _log_waiting(self) -> None:
        waiting = sum(1 for w in self._watched.values() if w.state == "SCHEDULED")
        if waiting:
            logger.info("%d job(s) wait for a worker on work pool '%s'", waiting, self.work_pool)

    # -- API calls -------------------------------------------------------------------------

    def _api(self) -> PrefectClient:
        if self._client is None:
            raise RuntimeError("DeploymentRunner.start was not awaited")
        return self._client

    def deployment_of(self, flow: str) -> str:
        """The name of a registered flow's deployment."""
        if flow == defaults.WAIT_FLOW:
            return self.deployment
        return deployment_name(self.registry.get(flow), self.deployment)

    async def _find_deployment(self, flow: str) -> UUID:
        from prefect.exceptions import ObjectNotFound

        found_id = self._deployment_ids.get(flow)
        if found_id is None:
            name = self.deployment_of(flow)
            try:
                found = await self._api().read_deployment_by_name(name)
            except ObjectNotFound:
                raise RunnerUnavailable(
                    f"deployment {name} not found at {self._api().api_url}: "
                    "run `dropflow deploy --config <this config>` first"
                ) from None
            found_id = self._deployment_ids[flow] = found.id
            if self._subscribed and self._subscriber is not None:
                # Its runs' events too: subscribe again, with every deployment found.
                self._subscriber.cancel()
                self._subscriber = asyncio.create_task(self._subscribe())
        return found_id

    async def _cancel(self, flow_run: FlowRun, message: str) -> None:
        """Ask Prefect to cancel a run: its worker then stops the run's process."""
        from prefect.states import Cancelling

        state: Any = Cancelling(message=message)
        try:
            await self._api().set_flow_run_state(flow_run.id, state, force=True)
        except Exception as exc:
            if await self._api_down():
                raise RunnerUnavailable(f"Prefect API unavailable ({exc!r})") from exc
            raise

    async def _cancel_unstarted(self, flow_run: FlowRun) -> bool:
        """Cancel a run no worker took in time; False if a worker took it meanwhile."""
        from prefect.client.schemas.responses import SetStateStatus
        from prefect.states import Cancelled

        state: Any = Cancelled(
            message=f"dropflow: no worker started it within {self.start_timeout:g} s"
        )
        result = await self._api().set_flow_run_state(flow_run.id, state)
        return bool(result.status == SetStateStatus.ACCEPT)

    async def _mark_crashed(self, flow_run: FlowRun) -> FlowRun:
        from prefect.states import Crashed

        state: Any = Crashed(
            message=f"dropflow: no final state {self.lost_run_margin:g} s past its timeout; "
            "its worker is taken as lost"
        )
        await self._api().set_flow_run_state(flow_run.id, state, force=True)
        return flow_run.model_copy(update={"state": state})

    async def _find_worker(self, flow_run: FlowRun) -> str | None:
        """The worker that Prefect's events say submitted the run, if they say it."""
        try:
            page = await self._api().read_events(
                internals.submitted_flow_run_events(flow_run.id), limit=1
            )
        except Exception as exc:  # the worker's name is a nicety; the outcome is not
            logger.debug("cannot read the events of flow run %s: %r", flow_run.id, exc)
            return None
        return internals.submitting_worker(page.events[0]) if page.events else None

    async def _api_down(self) -> bool:
        try:
            return await self._api().api_healthcheck() is not None
        except Exception:
            return True
