"""`PrefectRunner`: each job is a flow run in this process, on the service's event loop.

Many jobs share one Prefect client set-up and none blocks another. It runs the wait flow itself;
a registered flow other than wait runs through `watcher.running.registered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from watcher import defaults
from watcher.config.registry import Registry
from watcher.retry import retry
from watcher.running.api import api_down, crash_leftovers, overloaded, unavailable, unreachable
from watcher.running.child import warm_up
from watcher.running.contract import (
    FLOW_RUN_TAG,
    RunnerHealth,
    RunnerUnavailable,
    RunOutcome,
    RunRequest,
)
from watcher.server.embedded import EmbeddedOptions, EmbeddedServer, EmbeddedServerError
from watcher.server.prefect_internals import enter_shared_clients, flush_prefect, import_engine
from watcher.server.startup import EARLY_SERVER, ENGINE_EARLY
from watcher.server.supervisor import Supervisor

if TYPE_CHECKING:
    from flows.wait import WaitOutcome

T = TypeVar("T")

__all__ = ["FLUSH_TIMEOUT", "PrefectRunner"]

logger = logging.getLogger(__name__)


def _from_outcome(data: WaitOutcome) -> RunOutcome:
    return RunOutcome(
        status=data["outcome"],
        message=data["message"],
        sleep=data["sleep"],
        flow_run_id=data["flow_run_id"],
        flow_run_name=data["flow_run_name"],
    )


_SWEEP_POLL = 0.5  # seconds between looks at the runs still going on after a restart
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
        inherit_fds: Callable[[], tuple[int, ...]] | None = None,
    ) -> None:
        """`embedded`: the embedded server to start when Prefect's settings give no API URL.
        `environ`: its environment. `on_import`: called once Prefect is imported (in a worker
        thread, before any flow runs), for the CLI to set up Prefect's logging. `registry`:
        the flows jobs may name, imported at start (default: only wait). `inherit_fds`: the
        descriptors the embedded server process keeps open (the `data_dir` lock)."""
        self.registry = registry or Registry.default()
        self._max_return_bytes = max_return_bytes
        self._embedded = embedded
        self._environ = dict(environ or {})
        self._on_import = on_import
        self._inherit_fds = inherit_fds
        self._server: EmbeddedServer | None = None
        self._settings = contextlib.ExitStack()
        self._clients = contextlib.AsyncExitStack()
        self._context: contextvars.Context | None = None
        self._ui_url: str | None = None
        self.api_url: str | None = None
        """The Prefect API the flow runs report to, once `start` found it (the embedded
        server's, or `PREFECT_API_URL`)."""
        self._finishing: set[asyncio.Future[Any]] = set()  # flow runs stopped, still recording
        self.health = RunnerHealth()
        self._supervisor: Supervisor | None = None  # the embedded server's, once it serves
        self._active: Counter[int] = Counter()  # runs going on, by restarts seen at their start
        self._sweeps: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        # Everything `start` enters (settings, clients) lives in a context of its own: `run`
        # executes each flow in a copy of it, and `close` leaves it there, whichever tasks
        # call them.
        self._context = contextvars.copy_context()
        return await asyncio.create_task(self._start(), context=self._context)

    async def _start(self) -> str:
        launched = await self._launch_early()
        # Prefect takes more than a second to import here: it is imported now, in a thread,
        # while the service already watches the inbox and reads job files (and the embedded
        # server, launched above, imports its own).
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
            self._server = launched or EmbeddedServer(
                self._embedded, self._environ, inherit_fds=self._inherit_fds
            )
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
        elif launched is not None:
            # Prefect's settings name a server after all (a profile, a .env file): not needed.
            self._server = None
            await asyncio.to_thread(launched.stop)
        self._ui_url = PREFECT_UI_URL.value() or None
        async with get_client() as client:
            url = self.api_url = str(client.api_url)

        # A server that is down at boot may come back: jobs wait for it (entering the shared
        # clients asks the API for its version).
        async def enter() -> contextlib.AsyncExitStack:
            attempt = contextlib.AsyncExitStack()
            try:
                await enter_shared_clients(attempt)
            except BaseException:
                await attempt.aclose()
                raise
            return attempt

        # Prefect reports an unreachable API in several shapes (a RuntimeError "Failed to reach
        # API", httpx errors, a version check on a half-started server): all mean "not now", as
        # for a job's run.
        self._clients = await retry(
            enter,
            on=Exception,
            first=_START_RETRY_FIRST,
            most=_START_RETRY_MAX,
            before_wait=lambda exc, delay: logger.warning(
                "Prefect API at %s is not answering (%s); jobs wait, retrying in %gs",
                url,
                exc,
                delay,
            ),
        )
        if self._server is not None:
            # This service alone uses the embedded server (its data_dir is locked): a run still
            # "running" there was left so by an earlier stop that could not record its end
            # (kill -9, power loss). Its job, still claimed, runs again.
            left = await crash_leftovers("The dropflow service stopped during this run.")
            if left:
                logger.warning(
                    "marked Crashed %d flow run(s) left running by an earlier stop", left
                )
            # The supervisor calls back from its own thread.
            loop = asyncio.get_running_loop()
            self._supervisor = Supervisor(
                self._server,
                on_down=lambda reason: loop.call_soon_threadsafe(self.health.mark_down, reason),
                on_up=lambda: loop.call_soon_threadsafe(self._served_again),
            )
            self._supervisor.start()
        return f"Prefect API at {url} ({mode})"

    async def _launch_early(self) -> EmbeddedServer | None:
        """Launch the embedded server before Prefect is imported (`early-server`), when the
        environment names no API URL: Prefect's own settings, read once it is imported, decide
        whether it is kept. A launch that fails is tried again then, and its error counts only
        if the embedded server is needed."""
        options = self._embedded
        if options is None or EARLY_SERVER not in options.fast_start:
            return None
        if self._environ.get("PREFECT_API_URL"):
            return None
        server = EmbeddedServer(options, self._environ, inherit_fds=self._inherit_fds)
        try:
            await asyncio.to_thread(server.launch)
        except EmbeddedServerError:
            return None
        self._server = server  # `close` stops it, even if the service stops before it serves
        return server

    def _served_again(self) -> None:
        self.health.mark_up()
        sweep = asyncio.create_task(
            self._crash_cut_runs(self._restarts(), datetime.now(UTC)), context=self._context
        )
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._sweeps.discard)

    async def _crash_cut_runs(self, restarts: int, restarted_at: datetime) -> None:
        """Once every run begun before restart number `restarts` has ended (finished, or given
        up to be run again), mark Crashed the flow runs created before it that the server
        still has as running: the restart cut them, and no job waits for them any more."""
        while any(n for gen, n in self._active.items() if gen < restarts):
            await asyncio.sleep(_SWEEP_POLL)
        try:
            left = await crash_leftovers(
                "The embedded Prefect server failed during this run; its job ran again.",
                created_before=restarted_at,
            )
        except Exception as exc:  # the server failed again: the next restart sweeps
            logger.warning("could not mark the runs cut by the restart Crashed: %s", exc)
            return
        if left:
            logger.warning("marked Crashed %d flow run(s) cut by the server's restart", left)

    def _restarts(self) -> int:
        return self._supervisor.restarts if self._supervisor is not None else 0

    async def _lost(self, restarts: int) -> bool:
        """Whether a run that began after `restarts` restarts of the embedded server ended
        badly because of the server, not the job: the API is down, or the server failed or
        was restarted meanwhile. Such a run is run again once the server serves."""
        down = await api_down()  # Prefect's client may retry for seconds meanwhile
        supervisor = self._supervisor
        failing = supervisor is not None and (
            not self.health.up.is_set() or await asyncio.to_thread(supervisor.problem) is not None
        )
        # Last, after the waits above: the server may have been restarted during them.
        return down or failing or self._restarts() != restarts

    async def close(self) -> None:
        if self._supervisor is not None:
            await asyncio.to_thread(self._supervisor.stop)
        for sweep in list(self._sweeps):
            sweep.cancel()
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

    async def _crashed(self, flow_run_id: str) -> None:
        """Mark a run the server lost Crashed (once it serves again), unless it ended."""
        from prefect.states import Crashed

        from watcher.running.registered import set_state

        await self.health.up.wait()
        await set_state(
            flow_run_id,
            Crashed(message="The embedded Prefect server failed during this run; run again."),
            unless_final=True,
        )

    def _import_prefect(self) -> None:
        import flows.wait  # noqa: F401  (Prefect itself, the flow, the engine)
        from flows.runlogs import log_cancelled_as_info

        # A flow this service stops at its timeout ends Cancelled, which Prefect's engine would
        # log as an ERROR line (the wait flow installs this too, for the workers it runs in).
        log_cancelled_as_info()

        if self._on_import is not None:
            self._on_import()
        # Every registered flow, once: a bad entrypoint stops the service now, not at a job.
        self.registry.load()
        if any(not flow.is_async for flow in self.registry.loaded_flows()):
            warm_up()  # the fork server imports Prefect now, not at the first sync job
        if self._embedded is not None and ENGINE_EARLY in self._embedded.fast_start:
            import_engine()  # while the server starts, not at the first job

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
        restarts = self._restarts()
        self._active[restarts] += 1
        try:
            return await self._run_once(request, restarts)
        finally:
            self._active[restarts] -= 1

    async def _run_once(self, request: RunRequest, restarts: int) -> RunOutcome:
        if request.flow != defaults.WAIT_FLOW:
            from watcher.running.registered import RegisteredRun

            registered = RegisteredRun(
                self.registry.get(request.flow),
                request,
                ui_url=self._ui_url,
                max_return_bytes=self._max_return_bytes,
                finishing=self._finishing,
                api_down=lambda: self._lost(restarts),
            )
            return await registered.run()
        from prefect import tags

        from flows.wait import wait

        try:
            # One tag for all runs: Prefect keeps a tag-concurrency service (a thread and a
            # client, until exit) per distinct tag set, so per-job tags leak one per job
            # (docs/performance.md, "Prefect settings"). The job is the flow run's name.
            with tags(FLOW_RUN_TAG):
                state = await wait(
                    timeout=request.timeout,
                    sleep=request.sleep,
                    name=request.label,
                    return_state=True,
                )
        except Exception as exc:
            # Prefect reports an unreachable API in several shapes (httpx errors, a
            # RuntimeError "Failed to reach API", 503s after its own retries): ask the API.
            if overloaded(exc) or unreachable(exc) or await self._lost(restarts):
                raise unavailable(exc) from exc
            raise
        if state.is_completed() or state.is_cancelled():
            from prefect.exceptions import MissingResult

            try:
                data = await state.aresult(raise_on_failure=False)
            except MissingResult:
                data = None  # the engine read its state back from the API: a restart cut it
            if isinstance(data, dict) and data.get("outcome") in ("completed", "canceled"):
                outcome = _from_outcome(data)
                if outcome.status == "canceled" and self._restarts() != restarts:
                    # Its timeout counted the server's restart too: not the job's doing.
                    raise unavailable("the embedded server restarted while the job ran")
                return outcome
        if await self._lost(restarts):
            flow_run_id = state.state_details.flow_run_id
            if flow_run_id is not None:
                await self._crashed(str(flow_run_id))
            raise unavailable(f"flow run ended {state.name}")
        message = state.message or f"the flow run ended in state {state.name}"
        return RunOutcome(
            status="error",
            message=f"The flow run ended in {state.name}: {message}",
            flow_run_id=str(state.state_details.flow_run_id or "") or None,
        )
