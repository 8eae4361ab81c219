"""How a job becomes a flow run and an outcome: the one seam between the watcher and Prefect.

`PrefectRunner` runs the wait flow in this process, on the service's event loop, so many jobs
share one Prefect client set-up and none blocks another. A runner that hands jobs to a
Prefect deployment on a work pool fits the same `Runner` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from flows.wait import WaitOutcome, draw_sleep, outcome_message
from watcher.embedded import EmbeddedServer, EmbeddedServerError

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


@dataclass(frozen=True)
class RunOutcome:
    """What became of a job's run."""

    status: Literal["completed", "canceled", "error"]
    message: str
    sleep: float | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    work_pool: str | None = None
    worker: str | None = None


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


FLUSH_TIMEOUT = 10.0
"""Seconds the service waits at exit for Prefect to send its last logs and events."""


async def _flush_prefect() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    drained = EventsWorker.drain_all(timeout=FLUSH_TIMEOUT)
    if inspect.isawaitable(drained):
        await drained


class PrefectRunner:
    """Runs the wait flow in-process against the configured Prefect API.

    With `embedded_environment`, it first starts an `EmbeddedServer` with that environment and
    points every flow run of the service at it. `start` must be awaited in the task that goes
    on to create the job tasks: they inherit the Prefect settings it enters.
    """

    def __init__(self, embedded_environment: Mapping[str, str] | None = None) -> None:
        self._embedded_environment = embedded_environment
        self._server: EmbeddedServer | None = None
        self._settings = contextlib.ExitStack()
        self._clients = contextlib.AsyncExitStack()

    async def start(self) -> str:
        from prefect.client.orchestration import get_client
        from prefect.context import AsyncClientContext, SyncClientContext
        from prefect.settings import PREFECT_API_URL, temporary_settings

        mode = "server"
        if self._embedded_environment is not None:
            self._server = EmbeddedServer(self._embedded_environment)
            logger.info("no PREFECT_API_URL: starting Prefect's embedded server")
            try:
                url = await asyncio.to_thread(self._server.start)
            except EmbeddedServerError as exc:
                raise RunnerUnavailable(str(exc)) from exc
            self._settings.enter_context(temporary_settings({PREFECT_API_URL: url}))
            mode = "embedded server"
        # One sync and one async client for every flow run (the job tasks inherit these
        # contexts). Otherwise Prefect builds three clients per run, its own async one and two
        # sync ones that only look up the default result storage, each with a new SSL context
        # (~20 ms of CPU on the event loop). bench, 100 runs: client CPU 0.099 -> 0.031 s a run.
        self._clients.enter_context(SyncClientContext.get_or_create())
        await self._clients.enter_async_context(AsyncClientContext.get_or_create())
        async with get_client() as client:
            url = str(client.api_url)
            if await client.api_healthcheck() is not None:
                # A server that is down at boot may come back: jobs wait for it.
                logger.warning("Prefect API at %s is not answering yet; jobs will wait", url)
        return f"Prefect API at {url} ({mode})"

    async def close(self) -> None:
        # Send the logs and events still queued while the API is up: Prefect otherwise drains
        # them at interpreter exit, and waits forever if the embedded server is gone by then.
        try:
            await asyncio.wait_for(_flush_prefect(), FLUSH_TIMEOUT)
        except Exception as exc:
            logger.warning("could not send the last Prefect logs and events: %r", exc)
        await self._clients.aclose()
        self._settings.close()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None

    async def run(self, request: RunRequest) -> RunOutcome:
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

    @staticmethod
    async def _api_down() -> bool:
        from prefect.client.orchestration import get_client

        try:
            async with get_client() as client:
                return await client.api_healthcheck() is not None
        except Exception:
            return True


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
