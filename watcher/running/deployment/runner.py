"""`DeploymentRunner`: each job becomes a flow run of its flow's deployment, run by workers.

The watcher creates the flow run (`idempotency_key` = the claim id, named after the job at
creation) and waits for its final state; Prefect workers on the work pool, on this machine or
others, run it. The same key returns the same flow run, so a watcher restarted after a crash
re-attaches to the runs it had created instead of starting new ones. A run that fails or
crashes is run again under the next key (`<claim id>.2`, `.3`, ...), up to `max_attempts` runs,
and those keys too are found again after a restart: the keys depend on the claim only. A job of
a route with its own `deployment` runs on that route's deployments, and on its `work_queue`
when it names one (else the deployment's queue).

Waiting is `tracker.Tracker`'s (events, with polling while they are down), and what a run in
flight calls for is `verdict.verdict`'s answer; the state writes are `states`'. Measured on a
PostgreSQL-backed server (2 cores, 200 runs in flight, none changing, 30 s windows): the server
used 2.1 % of a core with no watcher, 2.5 % with the subscription, 5.1 % polling every 0.25 s
for finished runs.

The outcome comes from the final state alone: with results not persisted, a flow's return
value cannot be read from another process, and the wait flow puts its sentence in the state's
message. The seconds of work are drawn here, so that the flow run's parameters say them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from flows.wait import draw_sleep
from watcher import defaults
from watcher.config.registry import Registry
from watcher.running.api import api_down, unavailable, unreachable
from watcher.running.contract import (
    FLOW_RUN_TAG,
    RunnerHealth,
    RunnerUnavailable,
    RunOutcome,
    RunRequest,
    stopped_message,
)
from watcher.running.deployment import states
from watcher.running.deployment.registration import deployment_name
from watcher.running.deployment.tracker import FINISHED_POLL, Tracker, Watch
from watcher.running.deployment.verdict import Limits
from watcher.server import prefect_internals as internals

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

__all__ = [
    "CHECK_INTERVAL",
    "FINISHED_POLL",
    "NO_RETURN",
    "PENDING_LIMIT",
    "WAITING_LOG_INTERVAL",
    "DeploymentRunner",
]

logger = logging.getLogger(__name__)

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

NO_RETURN = (
    "not readable with runner: deployment: the flow ran on a worker, and its result is not "
    "persisted"
)
"""The result's `return_note` for a completed flow run of a flow other than wait."""


class DeploymentRunner:
    """Runs each job as a flow run of its flow's deployment on the work pool `work_pool`.

    Args:
        deployment: `wait/<deployment name>`, registered by `dropflow deploy`; another flow's
            deployment is `<its Prefect name>/<deployment name>`. A request's own
            `deployment` (its route's) names another such set.
        work_pool: The work pool the deployment runs on (named in messages).
        max_attempts: Flow runs a job gets when they fail or crash, before an error result.
        start_timeout: Seconds a flow run may wait for a worker; None waits for ever.
        lost_run_margin: Seconds past its timeout after which a flow run still running is
            taken as lost with its worker, marked Crashed and run again (`PENDING_LIMIT` for a
            run still pending).
        route_deployments: The routes' own deployments (`wait/<name>`), whose runs' events
            are followed from the start too.
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
        route_deployments: Collection[str] = (),
    ) -> None:
        self.registry = registry or Registry.default()
        self.deployment = deployment
        self.deployments = list(dict.fromkeys([deployment, *route_deployments]))
        self.work_pool = work_pool
        self.max_attempts = max_attempts
        self.start_timeout = start_timeout
        self.lost_run_margin = lost_run_margin
        self.health = RunnerHealth()
        self._deployment_ids: dict[str, UUID] = {}  # by deployment name
        self._clients = contextlib.AsyncExitStack()
        self._client: PrefectClient | None = None
        self.api_url: str | None = None
        """The Prefect API the flow runs are created at, once `start` connected."""
        self._tracker = Tracker(
            self._api,
            self._deployments,
            Limits(start_timeout, lost_run_margin, PENDING_LIMIT),
            work_pool=work_pool,
            check_interval=check_interval,
            waiting_log_interval=waiting_log_interval,
            log=logger,
        )
        self._watched: dict[UUID, Watch] = self._tracker.watched  # read by the tests

    @property
    def _subscribed(self) -> bool:
        """Whether the flow-run events come (read by the tests)."""
        return self._tracker.subscribed

    async def start(self) -> str:
        from prefect.client.orchestration import get_client

        # Every registered flow, once (its parameter schema checks jobs before any run).
        await asyncio.to_thread(self.registry.load)
        self._client = await self._clients.enter_async_context(get_client())
        url = self.api_url = str(self._client.api_url)
        if await self._client.api_healthcheck() is None:
            for deployment in self.deployments:
                await self._find_deployment(self.registry.names[0], deployment)
        else:
            logger.warning("Prefect API at %s is not answering yet; jobs will wait", url)
        self._tracker.start()
        plural = "s" * (len(self.deployments) > 1)
        return (
            f"deployment{plural} {', '.join(self.deployments)} on work pool {self.work_pool}, "
            f"Prefect API at {url}"
        )

    async def close(self) -> None:
        # Runs on workers go on: a restart re-attaches to them through their keys.
        await self._tracker.close()
        await self._clients.aclose()

    async def run(self, request: RunRequest) -> RunOutcome:
        try:
            return await self._run(request)
        except (RunnerUnavailable, asyncio.CancelledError):
            raise
        except Exception as exc:
            if self._client is None or unreachable(exc) or await api_down(self._client):
                raise unavailable(repr(exc)) from exc
            raise

    async def _run(self, request: RunRequest) -> RunOutcome:
        deployment_id = await self._find_deployment(request.flow, request.deployment)
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
                work_queue_name=request.work_queue,
            )
            flow_run, verdict = await self._tracker.wait(
                flow_run, request.timeout, stop=not wait, cancel_unstarted=self._cancel_unstarted
            )
            if verdict == "timed_out":
                message = stopped_message(request.flow, request.timeout)
                await states.cancel(client, flow_run, message)
                worker = await self._find_worker(flow_run)
                return self._outcome(flow_run, "canceled", message, worker)
            if verdict == "not_started":
                queue = f" (work queue '{request.work_queue}')" if request.work_queue else ""
                return self._outcome(
                    flow_run,
                    "error",
                    f"No worker on work pool '{self.work_pool}'{queue} started the flow run within "
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
                failed = await states.mark_crashed(client, flow_run, self.lost_run_margin)
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

    # -- API calls -------------------------------------------------------------------------

    def _api(self) -> PrefectClient:
        if self._client is None:
            raise RuntimeError("DeploymentRunner.start was not awaited")
        return self._client

    def deployment_of(self, flow: str, deployment: str | None = None) -> str:
        """The name of a registered flow's deployment in the set `deployment` (`wait/<name>`;
        default: the runner's)."""
        deployment = deployment or self.deployment
        if flow == defaults.WAIT_FLOW:
            return deployment
        return deployment_name(self.registry.get(flow), deployment)

    async def _find_deployment(self, flow: str, deployment: str | None = None) -> UUID:
        from prefect.exceptions import ObjectNotFound

        name = self.deployment_of(flow, deployment)
        found_id = self._deployment_ids.get(name)
        if found_id is None:
            try:
                found = await self._api().read_deployment_by_name(name)
            except ObjectNotFound:
                raise RunnerUnavailable(
                    f"deployment {name} not found at {self._api().api_url}: "
                    "run `dropflow deploy --config <this config>` first"
                ) from None
            found_id = self._deployment_ids[name] = found.id
            self._tracker.resubscribe()
        return found_id

    async def _deployments(self) -> Collection[UUID]:
        """Every registered flow's deployments found (`RunnerUnavailable` if none is)."""
        for deployment in self.deployments:
            for flow in self.registry.names:
                # A flow not deployed yet is subscribed to once a job finds it.
                with contextlib.suppress(RunnerUnavailable):
                    await self._find_deployment(flow, deployment)
        if not self._deployment_ids:
            raise RunnerUnavailable("no deployment of the registered flows found")
        return list(self._deployment_ids.values())

    async def _cancel_unstarted(self, flow_run: FlowRun) -> bool:
        assert self.start_timeout is not None  # only a start timeout leaves a run unstarted
        return await states.cancel_unstarted(self._api(), flow_run, self.start_timeout)

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
