"""When the Prefect API counts as unavailable, which makes a job wait and retry instead of
failing (`RunnerUnavailable`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from watcher.running.contract import FLOW_RUN_TAG, RunnerUnavailable

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

__all__ = ["api_down", "crash_leftovers", "overloaded", "unavailable", "unreachable"]


def overloaded(exc: Exception) -> bool:
    """An API answer that means "not now" (Prefect's own client retries these first)."""
    from prefect.exceptions import PrefectHTTPStatusError

    return isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code in (
        429,
        502,
        503,
        504,
    )


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from, or one in its group) says the API could
    not be reached at all: an httpx transport error (connection refused or reset, a timeout)
    or the OS's `ConnectionError`. The engine raises these from its own calls to the API,
    never from the job's code (a flow's failure is its state), so they mean "not now", even
    when the API answers again by the time anyone asks it (`api_down`)."""
    import httpx

    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        one = todo.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        if isinstance(one, httpx.TransportError | ConnectionError):
            return True
        if isinstance(one, BaseExceptionGroup):
            todo.extend(one.exceptions)
        todo.extend(e for e in (one.__cause__, one.__context__) if e is not None)
    return False


async def api_down(client: PrefectClient | None = None) -> bool:
    """Whether the API fails its health check, asked through `client` or a client of its own."""
    from prefect.client.orchestration import get_client

    try:
        if client is not None:
            return await client.api_healthcheck() is not None
        async with get_client() as own:
            return await own.api_healthcheck() is not None
    except Exception:
        return True


def unavailable(cause: object) -> RunnerUnavailable:
    """The error that has a job wait and retry: `Prefect API unavailable (<cause>)`."""
    return RunnerUnavailable(f"Prefect API unavailable ({cause})")


async def crash_leftovers(message: str, created_before: datetime | None = None) -> int:
    """Mark Crashed, with `message`, every dropflow flow run the API still has as scheduled,
    pending or running (created before `created_before`, if given); return how many. Only for
    a server no other service uses (the embedded default, whose `data_dir` is locked)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import FlowRun, StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.states import Crashed

    left = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[FLOW_RUN_TAG]),
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
            )
        ),
    )
    async with get_client() as client:
        found: list[FlowRun] = []
        while page := await client.read_flow_runs(
            flow_run_filter=left, sort=FlowRunSort.ID_DESC, offset=len(found), limit=200
        ):
            found.extend(page)
        cut = [
            run
            for run in found
            if created_before is None or (run.created is not None and run.created < created_before)
        ]
        for run in cut:
            await client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return len(cut)
