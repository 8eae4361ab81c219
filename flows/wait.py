"""The *wait* flow: a task does `sleep` seconds of work, the flow waits for it at most `timeout`.

The task stops its own work at the flow's deadline and ends `Cancelled`: a timeout is an
outcome the job asked for, not a failure, and Prefect's `timeout_seconds` would end the task
run `TimedOut` (type FAILED), with an ERROR line and a traceback in the run's logs. The work is
cooperative (`asyncio.sleep`), so it really stops at the deadline: a sync `time.sleep` in a
worker thread cannot be interrupted (PrefectHQ/prefect#15760) and a timed-out
`PrefectFuture.wait()` leaves the thread running. The flow's final state says which outcome
happened: `Completed` when the work finished in time, `Cancelled` when it ran past the timeout.
Both carry a `WaitOutcome` as their data.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext, TagsContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed

from flows.runlogs import log_cancelled_as_info
from flows.work import Outcome, draw_sleep, outcome_message

__all__ = ["WaitOutcome", "draw_sleep", "outcome_message", "sleep_for", "wait"]

logger = logging.getLogger(__name__)


class WaitOutcome(TypedDict):
    """What one run of the wait flow did."""

    outcome: Outcome
    sleep: float
    timeout: float
    flow_run_id: str
    flow_run_name: str
    message: str


# NO_CACHE: a cache key hashes the task's source and inputs on every run, and a sleep is never
# worth caching.
@task(name="sleep", task_run_name="sleep-{seconds}s", cache_policy=NO_CACHE, persist_result=False)
async def sleep_for(seconds: float, deadline: datetime | None = None) -> float | State[Any]:
    """Do `seconds` of (cooperative, cancellable) work, stopped at `deadline` if it comes first.

    Returns:
        `seconds` once the work is done; a `Cancelled` state, which the task run takes, if
        the deadline stopped it.
    """
    started = datetime.now(UTC)
    left = None if deadline is None else max((deadline - started).total_seconds(), 0.0)
    try:
        async with asyncio.timeout(left):
            await asyncio.sleep(seconds)
    except TimeoutError:
        spent = round((datetime.now(UTC) - started).total_seconds(), 2)
        return Cancelled(message=f"Stopped at its flow's deadline, after {spent:g} s of work.")
    return seconds


@flow(name="wait", flow_run_name="{name}", persist_result=False, validate_parameters=True)
async def wait(
    timeout: float,
    sleep: float | tuple[float, float] = 0.0,
    name: str = "wait",
) -> State[Any]:
    """Run `sleep` seconds of work and wait for it at most `timeout` seconds.

    Args:
        timeout: Seconds the flow waits for the work; > 0.
        sleep: Seconds of work, or `(min, max)` to draw them uniformly at random.
        name: A label; the flow run is named after it.

    Returns:
        `Completed` if the work finished within `timeout`, else `Cancelled`; either way the
        state's data is a `WaitOutcome` with the seconds of work actually drawn.
    """
    seconds = draw_sleep(sleep)
    # The deadline counts from the flow run's start: what Prefect spends before the work
    # begins (creating the task run: 0.13 s on average, 0.4 s at worst with 8 runs at once on
    # 2 cores) comes out of the timeout instead of being added to it.
    context = FlowRunContext.get()
    started = context.flow_run.start_time if context and context.flow_run else None
    deadline = (started or datetime.now(UTC)) + timedelta(seconds=timeout)
    log_cancelled_as_info()  # a canceled job's runs end Cancelled, which is no error
    # The flow run carries its caller's tags (dropflow finds its runs by them); the task run
    # gets none. A tagged task run first asks the API for tag concurrency slots, through one
    # service thread per process that serves every task run in turn: while the API is away
    # (a server restart), every flow's task waits behind the others' retries, for minutes.
    with TagsContext(current_tags=set()):
        # Prefect's overloads type this call as returning the State; for an async task it
        # returns a coroutine of it.
        task_state: State[Any] = await sleep_for(seconds, deadline, return_state=True)  # type: ignore[misc]
    if task_state.is_completed():
        outcome: Outcome = "completed"
    elif task_state.is_cancelled():  # the task ends itself Cancelled only at the deadline
        outcome = "canceled"
    else:
        # Anything else is a real failure of the task: let Prefect fail the flow with it.
        await task_state.aresult()
        raise RuntimeError(f"sleep task ended in {task_state.name}: {task_state.message}")
    message = outcome_message(outcome, seconds, timeout)
    result = WaitOutcome(
        outcome=outcome,
        sleep=seconds,
        timeout=timeout,
        flow_run_id=str(flow_run.id),
        flow_run_name=str(flow_run.name),
        message=message,
    )
    logger.debug("wait flow %s: %s", result["flow_run_name"], outcome)
    if outcome == "completed":
        return Completed(message=message, data=result)
    return Cancelled(message=message, data=result)
