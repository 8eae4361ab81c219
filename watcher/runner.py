"""How a job becomes a flow run and an outcome: the one seam between the watcher and Prefect.

`PrefectRunner` runs the wait flow in this process, on the service's event loop, so many jobs
share one Prefect client set-up and none blocks another. A runner that hands jobs to a
Prefect deployment on a work pool fits the same `Runner` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from watcher import defaults
from watcher.embedded import EmbeddedOptions, EmbeddedServer, EmbeddedServerError
from watcher.flowproc import run_in_child, shape_return, warm_up
from watcher.prefect_internals import enter_shared_clients, flush_prefect, with_function
from watcher.registry import RegisteredFlow, Registry

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

    from flows.wait import WaitOutcome

T = TypeVar("T")

__all__ = [
    "DirectRunner",
    "PrefectRunner",
    "RunOutcome",
    "RunRequest",
    "Runner",
    "RunnerUnavailable",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """One job, as the runner sees it."""

    claim_id: str
    label: str
    timeout: float
    sleep: float | tuple[float, float]
    attempt: int = 1
    flow: str = defaults.WAIT_FLOW
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Checked already (`Registry.parameters`); empty for the wait flow."""


@dataclass(frozen=True)
class RunOutcome:
    """What became of a job's run."""

    status: Literal["completed", "canceled", "error"]
    message: str
    sleep: float | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_run_url: str | None = None
    work_pool: str | None = None
    worker: str | None = None
    returned: bool = False
    """Whether `return_value` holds the flow's return value (flows other than wait)."""
    return_value: Any = None
    return_note: str | None = None
    """Why a flow that returned has no `return_value` in its result (not JSON, too large)."""


class RunnerUnavailable(Exception):
    """The runner cannot run jobs just now (the Prefect API is unreachable); try again later."""


class Runner(Protocol):
    """Turns run requests into outcomes."""

    async def start(self) -> str:
        """Get ready (connect, warm up); return a one-line description for the log."""
        ...

    async def run(self, request: RunRequest) -> RunOutcome:
        """Run one job to its outcome; raise `RunnerUnavailable` to have it retried."""
        ...

    async def close(self) -> None:
        """Release what `start` set up; called once no job is running."""
        ...


def _from_outcome(data: WaitOutcome) -> RunOutcome:
    return RunOutcome(
        status=data["outcome"],
        message=data["message"],
        sleep=data["sleep"],
        flow_run_id=data["flow_run_id"],
        flow_run_name=data["flow_run_name"],
    )


def _overloaded(exc: Exception) -> bool:
    """An API answer that means "not now" (Prefect's own client retries these first)."""
    from prefect.exceptions import PrefectHTTPStatusError

    return isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code in (
        429,
        502,
        503,
        504,
    )


_START_RETRY_FIRST, _START_RETRY_MAX = 0.5, 8.0  # seconds, while the API does not answer

FLUSH_TIMEOUT = 10.0
"""Seconds the service waits at exit for Prefect to send its last logs and events."""


class PrefectRunner:
    """Runs the wait flow in-process against the configured Prefect API.

    With an `EmbeddedServer`, `start` first starts it and points every flow run of the service
    at it. `start` may run in a task of its own (the service watches the inbox meanwhile):
    `run` executes each flow in a copy of the context `start` set up.
    """

    def __init__(
        self,
        embedded: EmbeddedOptions | None = None,
        environ: Mapping[str, str] | None = None,
        on_import: Callable[[], None] | None = None,
        registry: Registry | None = None,
        max_return_bytes: int = defaults.MAX_RETURN_BYTES,
    ) -> None:
        """`embedded`: the embedded server to start when Prefect's settings give no API URL.
        `environ`: its environment. `on_import`: called once Prefect is imported (in a worker
        thread, before any flow runs), for the CLI to set up Prefect's logging. `registry`:
        the flows jobs may name, imported at start (default: only wait)."""
        self.registry = registry or Registry(defaults.FLOWS, Path(defaults.FILES_DIR))
        self._max_return_bytes = max_return_bytes
        self._embedded = embedded
        self._environ = dict(environ or {})
        self._on_import = on_import
        self._server: EmbeddedServer | None = None
        self._settings = contextlib.ExitStack()
        self._clients = contextlib.AsyncExitStack()
        self._context: contextvars.Context | None = None
        self._ui_url: str | None = None
        self._finishing: set[asyncio.Future[Any]] = set()  # flow runs stopped, still recording

    async def start(self) -> str:
        # Everything `start` enters (settings, clients) lives in a context of its own: `run`
        # executes each flow in a copy of it, and `close` leaves it there, whichever tasks
        # call them.
        self._context = contextvars.copy_context()
        return await asyncio.create_task(self._start(), context=self._context)

    async def _start(self) -> str:
        # Prefect takes more than a second to import here: it is imported now, in a thread,
        # while the service already watches the inbox and reads job files.
        await asyncio.to_thread(self._import_prefect)
        from prefect.client.orchestration import get_client
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_UI_URL,
            get_current_settings,
            temporary_settings,
        )

        mode = "server"
        if self._embedded is not None and not get_current_settings().api.url:
            # No API URL in the environment, a .env or prefect.toml file, or the Prefect
            # profile: the embedded default.
            self._server = EmbeddedServer(self._embedded, self._environ)
            logger.info("no PREFECT_API_URL: starting Prefect's embedded server")
            try:
                url = await asyncio.to_thread(self._server.start)
            except EmbeddedServerError as exc:
                raise RunnerUnavailable(str(exc)) from exc
            # No UI: an empty UI URL, so Prefect prints no "View at" link to nowhere.
            ui_url = self._server.ui_url or ""
            self._settings.enter_context(
                temporary_settings({PREFECT_API_URL: url, PREFECT_UI_URL: ui_url})
            )
            mode = "embedded server" + (f", UI at {ui_url}/" if ui_url else ", no UI")
        self._ui_url = PREFECT_UI_URL.value() or None
        async with get_client() as client:
            url = str(client.api_url)
        # A server that is down at boot may come back: jobs wait for it (entering the shared
        # clients asks the API for its version).
        delay = _START_RETRY_FIRST
        while True:
            attempt = contextlib.AsyncExitStack()
            try:
                await enter_shared_clients(attempt)
                break
            except Exception as exc:
                # Prefect reports an unreachable API in several shapes (a RuntimeError "Failed
                # to reach API", httpx errors, a version check on a half-started server): all
                # mean "not now", as for a job's run.
                await attempt.aclose()
                logger.warning(
                    "Prefect API at %s is not answering (%s); jobs wait, retrying in %gs",
                    url,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _START_RETRY_MAX)
        self._clients = attempt
        return f"Prefect API at {url} ({mode})"

    async def close(self) -> None:
        if self._finishing:
            # Flow runs stopped at their timeout, whose Cancelled state Prefect still records.
            await asyncio.wait(set(self._finishing), timeout=FLUSH_TIMEOUT)
        context = self._context
        if context is not None:
            # Send the logs and events still queued while the API is up: Prefect otherwise
            # drains them at interpreter exit, and waits forever if the server is gone by then.
            try:
                flushing = self._in_context(flush_prefect(FLUSH_TIMEOUT))
                await asyncio.wait_for(flushing, FLUSH_TIMEOUT)
            except Exception as exc:
                logger.warning("could not send the last Prefect logs and events: %r", exc)
            await asyncio.create_task(self._clients.aclose(), context=context)
            context.run(self._settings.close)
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None

    def _import_prefect(self) -> None:
        import flows.wait  # noqa: F401  (Prefect itself, the flow, the engine)

        if self._on_import is not None:
            self._on_import()
        # Every registered flow, once: a bad entrypoint stops the service now, not at a job.
        self.registry.load()
        if any(not flow.is_async for flow in self.registry.loaded_flows()):
            warm_up()  # the fork server imports Prefect now, not at the first sync job

    def _in_context(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # A copy per call: each flow run sets its own context variables.
        assert self._context is not None, "start() first"
        return asyncio.create_task(coro, context=self._context.copy())

    def flow_run_url(self, flow_run_id: str | None) -> str | None:
        """The flow run's page in the Prefect UI, if there is a UI."""
        if not flow_run_id or not self._ui_url:
            return None
        return f"{self._ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"

    async def run(self, request: RunRequest) -> RunOutcome:
        outcome = await self._in_context(self._run(request))
        url = self.flow_run_url(outcome.flow_run_id)
        return dataclasses.replace(outcome, flow_run_url=url) if url else outcome

    async def _run(self, request: RunRequest) -> RunOutcome:
        if request.flow != defaults.WAIT_FLOW:
            return await self._run_flow(self.registry.get(request.flow), request)
        from prefect import tags

        from flows.wait import wait

        try:
            # One tag for all runs. Task runs inherit their flow's tags, and Prefect looks up
            # tag concurrency limits through a service (a thread and a client, kept until exit)
            # per distinct tag set: per-job tags paid that on every run and leaked a service per
            # job (bench, 100 runs: client CPU 0.10 -> 0.14-0.17 s a run, wall +30-65 %; 120 runs:
            # 122 services, 130 threads). The job is the flow run's name; its result file has
            # the flow run id.
            with tags("dropflow"):
                state = await wait(
                    timeout=request.timeout,
                    sleep=request.sleep,
                    name=request.label,
                    return_state=True,
                )
        except Exception as exc:
            # Prefect reports an unreachable API in several shapes (httpx errors, a
            # RuntimeError "Failed to reach API", 503s after its own retries): ask the API.
            if _overloaded(exc) or await self._api_down():
                raise RunnerUnavailable(f"Prefect API unavailable ({exc})") from exc
            raise
        if state.is_completed() or state.is_cancelled():
            data = await state.aresult(raise_on_failure=False)
            if isinstance(data, dict) and data.get("outcome") in ("completed", "canceled"):
                return _from_outcome(data)
        if await self._api_down():
            raise RunnerUnavailable(f"Prefect API unavailable (flow run ended {state.name})")
        message = state.message or f"the flow run ended in state {state.name}"
        return RunOutcome(
            status="error",
            message=f"The flow run ended in {state.name}: {message}",
            flow_run_id=str(state.state_details.flow_run_id or "") or None,
        )

    async def _run_flow(self, registered: RegisteredFlow, request: RunRequest) -> RunOutcome:
        """Any registered flow but wait: async ones here, sync ones in a process of their own
        (`watcher.flowproc`); either is stopped at its timeout."""
        from prefect import tags

        label = request.label
        try:
            if not registered.is_async:
                return await self._run_in_child(registered, request)
            stop = _Deadline(registered, request.timeout)
            # The name is a callable: a job's name is not a template.
            flow = with_function(
                registered.flow.with_options(flow_run_name=lambda: label),
                stop.wrap(registered.flow.fn),
            )
            with tags("dropflow"):
                # Typed by Prefect as the sync call; for an async flow it is a coroutine.
                called: Any = flow(**request.parameters, return_state=True)
                run = asyncio.ensure_future(called)
                stopped = asyncio.ensure_future(stop.reached.wait())
                try:
                    await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if not run.done():
                    # Stopped at the timeout: the result need not wait for Prefect to record
                    # the Cancelled state the function returned; that finishes meanwhile.
                    self._finishing.add(run)
                    run.add_done_callback(self._finishing.discard)
                    return RunOutcome(
                        "canceled", stop.message, flow_run_id=stop.flow_run_id, flow_run_name=label
                    )
                state: State[Any] = run.result()
        except RunnerUnavailable:
            raise
        except Exception as exc:
            if _overloaded(exc) or await self._api_down():
                raise RunnerUnavailable(f"Prefect API unavailable ({exc})") from exc
            raise
        flow_run_id = str(state.state_details.flow_run_id or "") or None
        base = RunOutcome("error", "", flow_run_id=flow_run_id, flow_run_name=label)
        if state.is_completed():
            value, note = shape_return(
                await state.aresult(raise_on_failure=False), self._max_return_bytes
            )
            return dataclasses.replace(
                base,
                status="completed",
                message=state.message or f"flow '{registered.name}' completed",
                returned=note is None,
                return_value=value,
                return_note=note,
            )
        if state.is_cancelled():
            return dataclasses.replace(
                base, status="canceled", message=state.message or _stopped(registered, 0)
            )
        if await self._api_down():
            raise RunnerUnavailable(f"Prefect API unavailable (flow run ended {state.name})")
        message = state.message or f"the flow run ended in state {state.name}"
        return dataclasses.replace(base, message=f"The flow run ended in {state.name}: {message}")

    async def _run_in_child(self, registered: RegisteredFlow, request: RunRequest) -> RunOutcome:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Crashed

        async with get_client() as client:
            flow_run = await client.create_flow_run(
                registered.flow,
                name=request.label,
                parameters=dict(request.parameters),
                tags=["dropflow"],
            )
            api_url = str(client.api_url)
        flow_run_id = str(flow_run.id)
        env = {"PREFECT_API_URL": api_url, "PREFECT_UI_URL": self._ui_url or ""}
        try:
            child = await run_in_child(
                registered.entrypoint,
                flow_run_id,
                request.label,
                env,
                request.timeout,
                self._max_return_bytes,
            )
        except asyncio.CancelledError:
            # The service stops: the child is killed, and the job runs again at the next
            # start. Say so in Prefect, or the run would show Running for ever.
            crashed: State[Any] = Crashed(message="dropflow stopped while it ran; runs again")
            await asyncio.shield(self._set_state(flow_run_id, crashed))
            raise
        base = RunOutcome("error", "", flow_run_id=flow_run_id, flow_run_name=request.label)
        if child.kind == "timed_out":
            message = _stopped(registered, request.timeout)
            await self._set_state(flow_run_id, Cancelled(message=message))
            return dataclasses.replace(base, status="canceled", message=message)
        if child.kind == "died":
            if await self._api_down():
                raise RunnerUnavailable(f"Prefect API unavailable ({child.message})")
            await self._set_state(flow_run_id, Crashed(message=child.message))
            return dataclasses.replace(base, message=f"The flow run crashed: {child.message}")
        if child.state_type == "COMPLETED":
            return dataclasses.replace(
                base,
                status="completed",
                message=child.message or f"flow '{registered.name}' completed",
                returned=child.return_note is None,
                return_value=child.return_value,
                return_note=child.return_note,
            )
        if child.state_type == "CANCELLED":
            return dataclasses.replace(base, status="canceled", message=child.message)
        message = child.message or f"the flow run ended in state {child.state_name}"
        return dataclasses.replace(
            base, message=f"The flow run ended in {child.state_name}: {message}"
        )

    @staticmethod
    async def _set_state(flow_run_id: str, state: State[Any]) -> None:
        from uuid import UUID

        from prefect.client.orchestration import get_client

        try:
            async with get_client() as client:
                await client.set_flow_run_state(UUID(flow_run_id), state, force=True)
        except Exception as exc:  # the result file still tells the outcome
            logger.warning("could not mark flow run %s %s: %s", flow_run_id, state.name, exc)

    @staticmethod
    async def _api_down() -> bool:
        from prefect.client.orchestration import get_client

        try:
            async with get_client() as client:
                return await client.api_healthcheck() is not None
        except Exception:
            return True


def _stopped(registered: RegisteredFlow, timeout: float) -> str:
    return f"Stopped at the timeout: flow '{registered.name}' ran longer than {timeout:g}s."


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
        self.message = _stopped(registered, timeout)
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


class DirectRunner:
    """The same work and timeout without Prefect.

    For measuring the watcher alone (benchmarks, the burst test), never for production use:
    no flow run is recorded anywhere.
    """

    async def start(self) -> str:
        return "no Prefect (direct runner: jobs are not recorded in Prefect)"

    async def close(self) -> None:
        return None

    async def run(self, request: RunRequest) -> RunOutcome:
        from flows.wait import draw_sleep, outcome_message

        if request.flow != defaults.WAIT_FLOW:
            return RunOutcome("error", "runner: direct runs only the wait flow")
        seconds = draw_sleep(request.sleep)
        try:
            await asyncio.wait_for(asyncio.sleep(seconds), request.timeout)
        except TimeoutError:
            return RunOutcome(
                "canceled", outcome_message("canceled", seconds, request.timeout), sleep=seconds
            )
        return RunOutcome(
            "completed", outcome_message("completed", seconds, request.timeout), sleep=seconds
        )
