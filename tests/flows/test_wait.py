"""The wait flow on its own, in this process, against the shared Prefect server."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun

from flows.wait import sleep_for, wait

pytestmark = pytest.mark.anyio


async def _flow_run(flow_run_id: Any) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(UUID(str(flow_run_id)))


async def _task_runs(flow_run_id: Any) -> list[TaskRun]:
    """The flow's task runs, once the server has recorded their final state (task run states
    reach the server as events, a moment after the flow returns)."""
    flt = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))]))
    async with get_client() as client:
        for _ in range(100):
            runs = await client.read_task_runs(flow_run_filter=flt)
            if runs and all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            await asyncio.sleep(0.1)
    raise AssertionError(f"task runs of {flow_run_id} never reached a final state: {runs}")


def _sleepers() -> list[asyncio.Task[Any]]:
    """Tasks of this loop still inside the work coroutine."""
    code = sleep_for.fn.__code__
    return [t for t in asyncio.all_tasks() if any(f.f_code is code for f in t.get_stack(limit=50))]


async def test_completed_when_the_work_finishes_in_time(prefect_api: str) -> None:
    state = await wait(timeout=5, sleep=0.2, name="in time", return_state=True)
    assert state.is_completed()
    data = await state.aresult()
    assert data["outcome"] == "completed" and data["sleep"] == 0.2 and data["timeout"] == 5
    assert data["flow_run_name"] == "in time"
    assert state.message == "The work (0.2 s) finished within the 5 s timeout."
    run = await _flow_run(data["flow_run_id"])
    assert run.name == "in time" and run.state is not None and run.state.is_completed()
    (task_run,) = await _task_runs(data["flow_run_id"])
    assert task_run.state is not None and task_run.state.is_completed()


async def test_the_flow_run_has_the_callers_tags_and_its_task_run_none(prefect_api: str) -> None:
    # A tagged task run asks the API for tag concurrency slots first (one shared service
    # thread per process): the wait flow's task runs must carry no tags.
    from prefect import tags

    with tags("dropflow"):
        state = await wait(timeout=5, sleep=0, name="tagged", return_state=True)
    data = await state.aresult()
    run = await _flow_run(data["flow_run_id"])
    assert run.tags == ["dropflow"]
    (task_run,) = await _task_runs(data["flow_run_id"])
    assert task_run.tags == []


async def test_canceled_on_time_and_the_work_really_stops(prefect_api: str) -> None:
    t0 = time.monotonic()
    state = await wait(timeout=1, sleep=30, name="too slow", return_state=True)
    elapsed = time.monotonic() - t0
    # Not waiting for the 30 s of work. How late after the timeout is a performance figure,
    # measured by `make bench` (W2, bench.flows), not bounded here: a busy machine adds to it.
    assert elapsed < 15, elapsed
    assert _sleepers() == []
    assert state.is_cancelled()
    assert state.message == "Canceled: the work (30 s) ran past the 1 s timeout."
    data = await state.aresult(raise_on_failure=False)
    assert data["outcome"] == "canceled"

    run = await _flow_run(data["flow_run_id"])
    assert run.state is not None and run.state.is_cancelled()
    assert run.start_time is not None and run.end_time is not None
    ran_for = (run.end_time - run.start_time).total_seconds()
    assert 1 <= ran_for < 15, ran_for
    # The task stopped its own work at the deadline: Cancelled, not Prefect's TimedOut (FAILED).
    (task_run,) = await _task_runs(data["flow_run_id"])
    assert task_run.state is not None and task_run.state.type == StateType.CANCELLED
    assert (task_run.state.message or "").startswith("Stopped at its flow's deadline, after ")


async def test_a_random_sleep_is_drawn_and_recorded(prefect_api: str) -> None:
    state = await wait(timeout=5, sleep=(0.05, 0.25), name="drawn", return_state=True)
    data = await state.aresult()
    assert 0.05 <= data["sleep"] <= 0.25
    assert f"({data['sleep']:g} s)" in (state.message or "")
    run = await _flow_run(data["flow_run_id"])
    assert run.parameters["sleep"] == [0.05, 0.25]


@pytest.mark.parametrize("bad", [{"timeout": "soon"}, {"timeout": 1, "sleep": "long"}])
async def test_parameters_are_validated(prefect_api: str, bad: dict[str, Any]) -> None:
    state = await wait(**bad, return_state=True)
    assert state.is_failed()
