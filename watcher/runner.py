"""How a job becomes a flow run and an outcome: the one seam between the watcher and Prefect.

`PrefectRunner` runs the wait flow in this process, on the service's event loop, so many jobs
share one Prefect client set-up and none blocks another. A runner that hands jobs to a
Prefect deployment on a work pool fits the same `Runner` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from flows.wait import WaitOutcome, draw_sleep, outcome_message

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


def _from_outcome(data: WaitOutcome) -> RunOutcome:
    return RunOutcome(
        status=data["outcome"],
        message=data["message"],
        sleep=data["sleep"],
        flow_run_id=data["flow_run_id"],
        flow_run_name=data["flow_run_name"],
    )


class PrefectRunner:
    """Runs the wait flow in-process against the configured Prefect API."""

    async def start(self) -> str:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            # The first request starts the embedded server, if that is the mode; doing it
            # now keeps that start-up out of the first job's time.
            error = await client.api_healthcheck()
            if error is not None:
                raise RunnerUnavailable(f"Prefect API at {client.api_url} is not healthy: {error}")
            url = str(client.api_url)
        return f"Prefect API at {url}"

    async def run(self, request: RunRequest) -> RunOutcome:
        from prefect import tags
        from prefect.exceptions import PrefectHTTPStatusError

        from flows.wait import wait

        try:
            with tags("dropflow", f"job:{request.label}", f"claim:{request.claim_id}"):
                state = await wait(
                    timeout=request.timeout,
                    sleep=request.sleep,
                    name=request.label,
                    return_state=True,
                )
        except (httpx.HTTPError, PrefectHTTPStatusError, ConnectionError) as exc:
            raise RunnerUnavailable(f"Prefect API unavailable: {exc}") from exc
        flow_run_id = str(state.state_details.flow_run_id or "") or None
        if state.is_completed() or state.is_cancelled():
            data = await state.aresult(raise_on_failure=False)
            if isinstance(data, dict) and data.get("outcome") in ("completed", "canceled"):
                return _from_outcome(data)
        message = state.message or f"the flow run ended in state {state.name}"
        return RunOutcome(
            status="error",
            message=f"The flow run ended in {state.name}: {message}",
            flow_run_id=flow_run_id,
        )


class DirectRunner:
    """The same work and timeout without Prefect.

    For measuring the watcher alone (benchmarks, the burst test), never for production use:
    no flow run is recorded anywhere.
    """

    async def start(self) -> str:
        return "no Prefect (direct runner: jobs are not recorded in Prefect)"

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
