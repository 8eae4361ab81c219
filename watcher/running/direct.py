"""`DirectRunner`: the wait flow's work and timeout without Prefect, for measuring the watcher
alone."""

from __future__ import annotations

import asyncio

from flows.work import draw_sleep, outcome_message
from watcher import defaults
from watcher.running.contract import RunnerHealth, RunOutcome, RunRequest

__all__ = ["DirectRunner"]


class DirectRunner:
    """The same work and timeout without Prefect.

    For measuring the watcher alone (benchmarks, the burst test), never for production use:
    no flow run is recorded anywhere.
    """

    def __init__(self) -> None:
        self.health = RunnerHealth()

    async def start(self) -> str:
        return "no Prefect (direct runner: jobs are not recorded in Prefect)"

    async def close(self) -> None:
        return None

    async def run(self, request: RunRequest) -> RunOutcome:
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
