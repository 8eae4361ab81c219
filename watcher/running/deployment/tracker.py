"""`Tracker`: the flow runs `DeploymentRunner` waits for, and how it learns their states.

One event subscription (the flow-run events of the deployments) gives each run's state as it
changes; a run is read when its event says it finished, or when `verdict` says a deadline timed
from those states may be due. While the subscription is down, one query for every run in flight
asks every `FINISHED_POLL` which have finished. A full read every `check_interval` catches
whatever the events missed. What a run read calls for is `verdict`'s answer too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from watcher.running.deployment.verdict import FINAL, Limits, RunView, Verdict, verdict
from watcher.server import prefect_internals as internals

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

__all__ = ["FINISHED_POLL", "Tracker"]

FINISHED_POLL = 0.25
"""While the event subscription is down: seconds between the queries that ask which runs in
flight have finished (one query for all of them, answered with the finished ones only)."""

_PAGE = 200  # flow run ids per query


@dataclass
class Watch:
    """One flow run the runner waits for."""

    timeout: float
    created: float
    done: asyncio.Future[tuple[FlowRun, Verdict]]
    state: str | None = None
    since: float = field(default_factory=time.monotonic)
    start_timeout: bool = True
    stop_at_timeout: bool = False
    """The flow does not end itself at its timeout (any flow but wait): the runner cancels
    it, counting from the run's start."""

    def view(self) -> RunView:
        return RunView(
            state=self.state,
            since=self.since,
            created=self.created,
            timeout=self.timeout,
            start_timeout=self.start_timeout,
            stop_at_timeout=self.stop_at_timeout,
        )


class Tracker:
    """Watches flow runs until `verdict` has a word for each.

    Args:
        client: The runner's Prefect client (called when needed: it is made at start).
        deployments: The ids of the deployments whose runs' events to subscribe to; raises if
            there are none yet.
        limits: The deadlines `verdict` applies.
        log: The logger of the runner's lines.
    """

    def __init__(
        self,
        client: Callable[[], PrefectClient],
        deployments: Callable[[], Awaitable[Collection[UUID]]],
        limits: Limits,
        *,
        work_pool: str,
        check_interval: float,
        waiting_log_interval: float,
        log: logging.Logger,
    ) -> None:
        self.watched: dict[UUID, Watch] = {}
        self.subscribed = False
        self.limits = limits
        self._client = client
        self._deployments = deployments
        self._work_pool = work_pool
        self._check_interval = check_interval
        self._waiting_log_interval = waiting_log_interval
        self._log = log
        self._poller: asyncio.Task[None] | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._named: set[UUID] = set()  # runs the events said finished, to read

    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll())
        self._subscriber = asyncio.create_task(self._subscribe())

    async def close(self) -> None:
        for task in (self._poller, self._subscriber):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def resubscribe(self) -> None:
        """A deployment was found: its runs' events too, subscribing again with every one."""
        if self.subscribed and self._subscriber is not None:
            self._subscriber.cancel()
            self._subscriber = asyncio.create_task(self._subscribe())

    async def wait(
        self,
        flow_run: FlowRun,
        timeout: float,
        *,
        stop: bool,
        cancel_unstarted: Callable[[FlowRun], Awaitable[bool]],
    ) -> tuple[FlowRun, Verdict]:
        """The run as last read and its verdict, anything but `wait`. A run no worker took
        in time is cancelled with `cancel_unstarted`; if a worker took it meanwhile (False),
        it is waited for like any other."""
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run, "final"
        watch = Watch(
            timeout=timeout,
            created=time.monotonic(),
            done=asyncio.get_running_loop().create_future(),
            state=flow_run.state.type.value if flow_run.state else None,
            stop_at_timeout=stop,
        )
        self.watched[flow_run.id] = watch
        try:
            while True:
                flow_run, found = await asyncio.shield(watch.done)
                if found != "not_started" or await cancel_unstarted(flow_run):
                    break
                # A worker took it just now: wait for it like any other.
                watch.start_timeout = False
                watch.done = asyncio.get_running_loop().create_future()
        finally:
            del self.watched[flow_run.id]
        return flow_run, found

    async def _poll(self) -> None:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        finals = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(t) for t in FINAL]))
        next_check = time.monotonic()
        next_log = time.monotonic() + self._waiting_log_interval
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FINISHED_POLL)
            self._wake.clear()
            now = time.monotonic()
            live = [i for i, w in self.watched.items() if not w.done.done()]
            named, self._named = self._named, set()
            state: FlowRunFilterState | None = None
            if not live:
                continue
            if now >= next_check:
                ids = live  # everything, in full: missed events, the waiting count
            elif self.subscribed:
                # The events said which runs finished; the clock says which may be due.
                due = {i for i in live if self._due(self.watched[i], now)}
                ids = [i for i in live if i in named or i in due]
            else:
                ids, state = live, finals
            if not ids:
                continue
            try:
                for start in range(0, len(ids), _PAGE):
                    page = ids[start : start + _PAGE]
                    runs = await self._client().read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page), state=state),
                        limit=len(page),
                    )
                    for run in runs:
                        self._observe(run, time.monotonic())
            except Exception as exc:
                if not failing:
                    self._log.warning("cannot read flow runs (%r); retrying", exc)
                failing = True
                self._named |= named
                continue
            failing = False
            if ids is live and state is None:
                next_check = now + self._check_interval
            if now >= next_log:
                next_log = now + self._waiting_log_interval
                self._log_waiting()

    def _due(self, watch: Watch, now: float) -> bool:
        """Whether, by the states the events gave, a deadline may be due for this run (the
        finished ones are read by name)."""
        return verdict(watch.view(), now, self.limits) not in ("wait", "final")

    async def _subscribe(self) -> None:
        from prefect.events.clients import get_events_subscriber

        while True:
            try:
                events = get_events_subscriber(
                    filter=internals.flow_run_events(*await self._deployments())
                )
                async with events:
                    self.subscribed = True
                    self._named |= set(self.watched)  # whatever changed before
                    self._wake.set()
                    async for event in events:
                        self._saw(event.resource.id, event.payload)
            except Exception as exc:
                self._log.warning("no flow-run events (%r): polling until they come back", exc)
            finally:
                self.subscribed = False
            await asyncio.sleep(FINISHED_POLL * 20)

    def _saw(self, resource: str, payload: dict[str, Any]) -> None:
        """A flow-run state event: note the run's state; a final one is read at once."""
        run_id = internals.event_flow_run_id(resource)
        state = internals.event_state_type(payload)
        if run_id is None or state is None or run_id not in self.watched:
            return
        watch = self.watched[run_id]
        if state != watch.state:
            watch.state, watch.since = state, time.monotonic()
            if state == "RUNNING" and watch.stop_at_timeout:
                # Read the run at its deadline, not at the next poll.
                asyncio.get_running_loop().call_later(watch.timeout, self._wake.set)
        if state in FINAL:
            self._named.add(run_id)
            self._wake.set()

    def _observe(self, run: FlowRun, now: float) -> None:
        """A run read: note its state; settle its wait if `verdict` has a word for it."""
        watch = self.watched.get(run.id)
        if watch is None or watch.done.done() or run.state is None:
            return
        if run.state.type.value != watch.state:
            watch.state, watch.since = run.state.type.value, now
        found = verdict(watch.view(), now, self.limits)
        if found != "wait":
            watch.done.set_result((run, found))

    def _log_waiting(self) -> None:
        waiting = sum(1 for w in self.watched.values() if w.state == "SCHEDULED")
        if waiting:
            self._log.info(
                "%d job(s) wait for a worker on work pool '%s'", waiting, self._work_pool
            )
