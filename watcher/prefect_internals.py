"""Everything dropflow takes from Prefect beyond its documented API, in one place.

Each name here is an assumption about Prefect 3.9's internals; `tests/watcher/
test_prefect_internals.py` checks every one of them and fails, naming it, when an upgrade
breaks it. Nothing else in dropflow uses a private Prefect name, setting or environment
variable.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "EPHEMERAL_ONLY_SERVICES_OFF",
    "SERVER_APP",
    "SERVER_PROCESS_ENVIRONMENT",
    "TIMEOUT_LINES",
    "TimeoutRecordFilter",
    "configure_prefect_logging",
    "enter_shared_clients",
    "flush_prefect",
    "with_function",
]

SERVER_APP = "prefect.server.api.server:create_app"
"""The factory `prefect server start` and the ephemeral server give uvicorn."""

EPHEMERAL_ONLY_SERVICES_OFF: Mapping[str, str] = {
    # Prefect's ephemeral mode (`PREFECT__SERVER_EPHEMERAL`) runs only the services marked
    # `run_in_ephemeral`, but it also refuses to serve the UI. These are the services it leaves
    # out, turned off one by one through their public settings: the embedded server serves the
    # UI and runs what ephemeral mode runs (plus db_vacuum for `history_days`). None of them
    # has work here: no deployments, schedules, work pools, pauses or workers.
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_ENABLED": "false",
}
"""Settings that turn off the server services Prefect's ephemeral mode does not run."""

SERVER_PROCESS_ENVIRONMENT: Mapping[str, str] = {
    **EPHEMERAL_ONLY_SERVICES_OFF,
    # Private: the app is built once and never mounted again, so FastAPI's route copies can be
    # skipped (what `prefect server start` and ephemeral mode set; start-up -0.3 s here).
    "PREFECT__SERVER_FINAL": "1",
}
"""The embedded server process's Prefect environment beyond the user-facing settings."""


def enter_shared_clients(stack: contextlib.AsyncExitStack) -> Any:
    """Enter one sync and one async Prefect client for every flow run started in this context.

    Otherwise Prefect builds three clients per run (its own async one and two sync ones that
    only look up the default result storage), each with a new SSL context (~20 ms of CPU on
    the event loop). bench, 100 runs: client CPU 0.099 -> 0.031 s a run. Relies on the engine
    reusing a client context it finds (`get_or_create`).
    """
    from prefect.context import AsyncClientContext, SyncClientContext

    stack.enter_context(SyncClientContext.get_or_create())
    return stack.enter_async_context(AsyncClientContext.get_or_create())


async def flush_prefect(timeout: float) -> None:
    """Send the run logs and events Prefect still holds in its background workers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    drained = EventsWorker.drain_all(timeout=timeout)
    if inspect.isawaitable(drained):
        await drained


def configure_prefect_logging() -> None:
    """Apply Prefect's logging config now, as the first use of `prefect` would.

    Importing `prefect.main` (what `from prefect import flow` loads) runs Prefect's
    `setup_logging`: its console handler is then on the root logger, where dropflow can swap it.
    """
    import prefect.main  # noqa: F401


TIMEOUT_LINES: Mapping[str, tuple[str, ...]] = {
    # The task engine, when a task runs past `timeout_seconds`.
    "prefect.task_runs": ("Task run exceeded timeout", "Finished in state TimedOut("),
    # The flow engine, when a flow returns its Cancelled state (a timeout, always: the wait
    # flow's, or dropflow's wrapper of another async flow, see `watcher.runner`).
    "prefect.flow_runs": ("Finished in state Cancelled(",),
}
"""The ERROR lines Prefect's engine logs for a job that ran past its timeout, by logger."""


class TimeoutRecordFilter(logging.Filter):
    """Drop the engine's ERROR records (and traceback) for a job that ran past its timeout.

    That is an expected outcome: dropflow logs it as one INFO line ("job finished: ...
    canceled"). Installed on console handlers only, so the records still reach the API (and
    the UI's log view) through Prefect's own API handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.task_engine import TaskRunTimeoutError

        if record.exc_info is not None and isinstance(record.exc_info[1], TaskRunTimeoutError):
            return False
        starts = TIMEOUT_LINES.get(record.name)
        return not (starts and record.getMessage().startswith(starts))


def with_function(flow: Any, fn: Callable[..., Any]) -> Any:
    """A copy of `flow` that calls `fn` (a `functools.wraps` wrapper of the flow's function).

    Prefect has no option for this; its engine calls `Flow.fn`, and reads the parameters from
    that function's signature, which `functools.wraps` carries over (`__wrapped__`). dropflow
    wraps an async flow's function to stop it at its timeout itself (see `watcher.runner`).
    """
    copy = flow.with_options()
    copy.fn = fn
    return copy
