"""How the in-process runner runs a registered flow other than wait.

An async flow runs on the service's event loop, stopped at its timeout by `_Deadline`, a
wrapper of its function. A sync flow cannot be interrupted in a thread: it runs in a process of
its own (`watcher.running.child`), killed at its timeout. Either way the timeout counts from the
flow run's start, and the run ends Cancelled in Prefect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from watcher.config.registry import RegisteredFlow
from watcher.running.api import overloaded, unavailable, unreachable
from watcher.running.child import run_in_child, shape_return
from watcher.running.contract import (
    FLOW_RUN_TAG,
    RunnerUnavailable,
    RunOutcome,
    RunRequest,
    stopped_message,
)
from watcher.server.prefect_internals import with_function

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

__all__ = ["RegisteredRun", "set_state"]

logger = logging.getLogger(__name__)


class RegisteredRun:
    """One job's run of a registered flow other than wait, in this process."""

    def __init__(
        self,
        registered: RegisteredFlow,
        request: RunRequest,
        *,
        ui_url: str | None,
        max_return_bytes: int,
        finishing: set[asyncio.Future[Any]],
        api_down: Callable[[], Awaitable[bool]],
    ) -> None:
        """`finishing`: where a run stopped at its timeout is kept while Prefect records its
        state (the runner waits for them at close). `api_down`: whether the Prefect API is
        unreachable (an error is then retried, not a result)."""
        self.registered = registered
        self.request = request
        self.ui_url = ui_url
        self.max_return_bytes = max_return_bytes
        self.finishing = finishing
        self.api_down = api_down

    async def run(self) -> RunOutcome:
        """Run it to its outcome; raise `RunnerUnavailable` to have it retried."""
        from prefect import tags

        registered, request = self.registered, self.request
        label = request.label
        try:
            if not registered.is_async:
                return await self._run_in_child()
            stop = _Deadline(registered, request.timeout)
            # The name is a callable: a job's name is not a template.
            flow = with_function(
                registered.flow.with_options(flow_run_name=lambda: label),
                stop.wrap(registered.flow.fn),
            )
            with tags(FLOW_RUN_TAG):
                # Typed by Prefect as the sync call; for an async flow it is a coroutine.
                called: Any = flow(**request.parameters, return_state=True)
                run = asyncio.ensure_future(called)
                stopped = asyncio.ensure_future(stop.reached.wait())
                try:
                    await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    run.cancel()  # the service stops: so does the flow (the job runs again)
                    raise
                finally:
                    stopped.cancel()
                if not run.done():
                    # Stopped at the timeout: the result need not wait for Prefect to record
                    # the Cancelled state the function returned; that finishes meanwhile.
                    self.finishing.add(run)
                    run.add_done_callback(self.finishing.discard)
                    return RunOutcome(
                        "canceled", stop.message, flow_run_id=stop.flow_run_id, flow_run_name=label
                    )
                state: State[Any] = run.result()
        except RunnerUnavailable:
            raise
        except Exception as exc:
            if overloaded(exc) or unreachable(exc) or await self.api_down():
                raise unavailable(exc) from exc
            raise
        flow_run_id = str(state.state_details.flow_run_id or "") or None
        value, note = None, None
        if state.is_completed():
            returned = await state.aresult(raise_on_failure=False)
            value, note = shape_return(returned, self.max_return_bytes)
        elif not state.is_cancelled() and await self.api_down():
            raise unavailable(f"flow run ended {state.name}")
        return self._ended(
            flow_run_id, state.type.value, str(state.name), state.message or "", value, note
        )

    def _ended(
        self,
        flow_run_id: str | None,
        state_type: str,
        state_name: str,
        message: str,
        value: Any = None,
        note: str | None = None,
    ) -> RunOutcome:
        """The outcome of a flow run that ended in a state of its own (in the service, or in
        its process): completed with its return value, canceled, or an error."""
        base = RunOutcome("error", "", flow_run_id=flow_run_id, flow_run_name=self.request.label)
        if state_type == "COMPLETED":
            return dataclasses.replace(
                base,
                status="completed",
                message=message or f"flow '{self.registered.name}' completed",
                returned=note is None,
                return_value=value,
                return_note=note,
            )
        if state_type == "CANCELLED":
            stopped = stopped_message(self.registered.name, self.request.timeout)
            return dataclasses.replace(base, status="canceled", message=message or stopped)
        message = message or f"the flow run ended in state {state_name}"
        return dataclasses.replace(base, message=f"The flow run ended in {state_name}: {message}")

    async def _run_in_child(self) -> RunOutcome:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Crashed

        registered, request = self.registered, self.request

        async with get_client() as client:
            flow_run = await client.create_flow_run(
                registered.flow,
                name=request.label,
                parameters=dict(request.parameters),
                tags=[FLOW_RUN_TAG],
            )
            api_url = str(client.api_url)
        flow_run_id = str(flow_run.id)
        env = {"PREFECT_API_URL": api_url, "PREFECT_UI_URL": self.ui_url or ""}
        try:
            child = await run_in_child(
                registered.entrypoint,
                flow_run_id,
                request.label,
                env,
                request.timeout,
                self.max_return_bytes,
            )
        except asyncio.CancelledError:
            # The service stops: the child is killed, and the job runs again at the next
            # start. Say so in Prefect, or the run would show Running for ever.
            crashed: State[Any] = Crashed(message="dropflow stopped while it ran; runs again")
            await asyncio.shield(set_state(flow_run_id, crashed))
            raise
        if child.kind == "timed_out":
            message = stopped_message(registered.name, request.timeout)
            await set_state(flow_run_id, Cancelled(message=message))
            return self._ended(flow_run_id, "CANCELLED", "Cancelled", message)
        if child.kind == "died":
            if await self.api_down():
                raise unavailable(child.message)
            await set_state(flow_run_id, Crashed(message=child.message))
            message = f"The flow run crashed: {child.message}"
            return RunOutcome(
                "error", message, flow_run_id=flow_run_id, flow_run_name=request.label
            )
        return self._ended(
            flow_run_id,
            child.state_type,
            child.state_name,
            child.message,
            child.return_value,
            child.return_note,
        )


async def set_state(flow_run_id: str, state: State[Any], *, unless_final: bool = False) -> None:
    """Force the flow run into `state` (with `unless_final`: only if it has not ended)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            if unless_final:
                current = (await client.read_flow_run(UUID(flow_run_id))).state
                if current is not None and current.is_final():
                    return
            await client.set_flow_run_state(UUID(flow_run_id), state, force=True)
    except Exception as exc:  # the result file still tells the outcome
        logger.warning("could not mark flow run %s %s: %s", flow_run_id, state.name, exc)


class _Deadline:
    """Stops an async flow's function at its timeout, from inside its flow run.

    The wrapper times the function from the flow run's start and, at the timeout, cancels it
    and returns a Cancelled state, which the flow run then takes, as the wait flow's runs do.
    `reached` is set at that moment, so the job's result is written at once, while Prefect
    records the state. Prefect's own flow timeout would work too, but it counts from the
    function's call (after the engine's set-up: up to 0.7 s late with 8 flows starting at once
    on 2 cores, bench.flows), its run ends Failed (TimedOut), and the result waits for the
    engine's whole finishing.
    """

    def __init__(self, registered: RegisteredFlow, timeout: float) -> None:
        self.timeout = timeout
        self.message = stopped_message(registered.name, timeout)
        self.reached = asyncio.Event()
        self.flow_run_id: str | None = None

    def wrap(self, fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def stopping(*args: Any, **kwargs: Any) -> Any:
            from prefect.context import FlowRunContext
            from prefect.states import Cancelled

            context = FlowRunContext.get()
            spent = 0.0
            if context is not None and context.flow_run is not None:
                self.flow_run_id = str(context.flow_run.id)
                # Counted from the flow run's start, as the wait flow does: what Prefect spends
                # before calling the function (most of the lateness, with 8 starting at once)
                # comes out of the timeout instead of being added to it.
                started = context.flow_run.start_time
                if started is not None:
                    spent = (datetime.now(UTC) - started).total_seconds()
            limit = asyncio.timeout(max(self.timeout - max(spent, 0.0), 0.001))
            try:
                async with limit:
                    return await fn(*args, **kwargs)
            except TimeoutError:
                if not limit.expired():
                    raise  # the flow's own TimeoutError
                self.reached.set()
                return Cancelled(message=self.message)

        return stopping
