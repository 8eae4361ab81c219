"""Everything dropflow takes from Prefect beyond its documented API, in one place.

Each name here is an assumption about Prefect 3.9's internals; `tests/watcher/
test_prefect_internals.py` checks every one of them and fails, naming it, when an upgrade
breaks it. Nothing else in dropflow uses a private Prefect name, setting or environment
variable. One engine detail the flows rely on themselves (the level of a Cancelled run's last
log line) is in `flows/runlogs.py`, since flows never import `watcher`; it has its own test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.events import Event
    from prefect.events.filters import EventFilter
    from prefect.flows import Flow

__all__ = [
    "ENGINE_MODULES",
    "EPHEMERAL_ONLY_SERVICES_OFF",
    "FLOW_RUN_RESOURCE",
    "PROCESS_POOL_TYPE",
    "RECORDER_LOGGER",
    "SERVER_APP",
    "SERVER_PROCESS_ENVIRONMENT",
    "WORKER_SUBMITTED_EVENT",
    "StoppedFlushFilter",
    "configure_prefect_logging",
    "create_app_once",
    "enter_shared_clients",
    "event_flow_run_id",
    "event_state_type",
    "file_entrypoint_type",
    "flow_run_events",
    "flush_prefect",
    "import_engine",
    "import_server_app",
    "load_deployed_flow",
    "migrations_fingerprint",
    "module_entrypoint_type",
    "process_pool_template",
    "run_flow_run_here",
    "submitted_flow_run_events",
    "submitting_worker",
    "use_database_url",
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


MIGRATIONS_FOLDER = ("server", "database", "_migrations", "versions", "postgresql")
"""Where, inside the `prefect` package, the PostgreSQL migrations alembic runs live: one file
per revision, the head among them."""


def migrations_fingerprint() -> str:
    """A digest of the names of Prefect's PostgreSQL migration files, found without importing
    Prefect (a second or more): a Prefect that ships another migration gives another digest."""
    import hashlib
    from importlib.util import find_spec

    spec = find_spec("prefect")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RuntimeError("the prefect package has no folder: cannot find its migrations")
    folder = Path(locations[0]).joinpath(*MIGRATIONS_FOLDER)
    names = sorted(path.name for path in folder.glob("*.py") if path.name != "__init__.py")
    if not names:
        raise RuntimeError(f"no migrations in {folder}: Prefect moved them")
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def import_server_app() -> None:
    """Import Prefect's server app (what `SERVER_APP` names), and uvicorn, without building it."""
    import prefect.server.api.server  # noqa: F401
    import uvicorn  # noqa: F401


def create_app_once() -> None:
    """Make every later `create_app()` without arguments in this process return the first app.

    Prefect's server-side clients (its automations' actions, at the services' start) call
    `prefect.server.api.server.create_app()` for an in-memory transport to the running app. It
    returns its cached app, but only after it has run `setup_logging` and hashed every setting
    (`Settings.hash_key`) for the cache's key: 0.27 s of CPU a call here, two calls on the way
    to the first answer. Settings do not change in the server process once it serves, so the
    first app is the one the cache would give; arguments still go to Prefect's own function.
    """
    import functools

    import prefect.server.api.server as server

    create_app = server.create_app
    built: list[Any] = []

    @functools.wraps(create_app)
    def once(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return create_app(*args, **kwargs)
        if not built:
            built.append(create_app())
        return built[0]

    server.create_app = once


def use_database_url(url: str) -> None:
    """Make `url` the server's database after Prefect was imported.

    Prefect reads its settings from the environment once, when `prefect.context` is imported,
    and keeps them; `refresh_global_settings_context` reads them again (Prefect calls it after
    its plugins set variables). The server's database is chosen later, when the app is built
    and at its first query, from those settings.
    """
    import os

    from prefect.context import refresh_global_settings_context

    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
    refresh_global_settings_context()


ENGINE_MODULES = (
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.utilities.visualization",
    "fastapi.encoders",
)
"""What Prefect imports at its first flow run in a process, not at `from prefect import flow`:
its flow and task engines, and what a flow run's start imports (0.2 s of imports here)."""


def import_engine() -> None:
    """Import what Prefect's first flow run would (`ENGINE_MODULES`), so that it does not."""
    import importlib

    for name in ENGINE_MODULES:
        importlib.import_module(name)


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


RECORDER_LOGGER = "prefect.server.services.task_run_recorder"
"""The logger of Prefect's task-run recorder, the server service that writes task runs from
their events."""
_RETRIED_FLUSH = re.compile(r"^Error flushing (\d+) events \(\1 to retry, 0 dropped\)$")


class StoppedFlushFilter(logging.Filter):
    """Drop the task-run recorder's ERROR (and traceback) for a flush cut by the server's stop.

    When Prefect stops its services it cancels a periodic flush in flight; the recorder logs
    `Error flushing N events (N to retry, 0 dropped)` with the CancelledError, puts the batch
    back and writes it in its final flush (`task_run_recorder.consumer`, prefect 3.9.1):
    nothing is lost, and an ERROR with a traceback in `server.log` at every such stop would say
    otherwise. Installed on that logger only once the server is stopping; a flush that drops
    events, or fails for another reason, is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        cut = isinstance(error, asyncio.CancelledError)
        return not (cut and _RETRIED_FLUSH.match(record.getMessage()))


# -- events and workers (`runner: deployment`) ------------------------------------------------

FLOW_RUN_RESOURCE = "prefect.flow-run."
"""A flow run's resource id in Prefect's events is this plus its id; its state events are named
this plus the state's name (`prefect.flow-run.Running`)."""

_DEPLOYMENT_RESOURCE = "prefect.deployment."

WORKER_SUBMITTED_EVENT = "prefect.worker.submitted-flow-run"
"""The event a worker emits when it hands a flow run to its infrastructure: the worker is the
event's resource (its name in `prefect.resource.name`), the flow run a related resource."""

PROCESS_POOL_TYPE = "process"
"""The work pool type `prefect worker start --type process` serves (Prefect's ProcessWorker)."""


def flow_run_events(*deployment_ids: UUID) -> EventFilter:
    """The filter for the state events of every flow run of these deployments.

    `any_resource`, not `related`: the server's live stream (`/events/out`) checks an event
    against `EventAnyResourceFilter.includes`, while `EventRelatedFilter` has no `includes` of
    its own there and lets every event through (prefect 3.9.1); both work for stored events.
    """
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    return EventFilter(
        event=EventNameFilter(prefix=[FLOW_RUN_RESOURCE]),
        any_resource=EventAnyResourceFilter(
            id=[f"{_DEPLOYMENT_RESOURCE}{deployment_id}" for deployment_id in deployment_ids]
        ),
    )


def event_flow_run_id(resource_id: str) -> UUID | None:
    """The flow run an event's resource id names; None if it names something else."""
    if not resource_id.startswith(FLOW_RUN_RESOURCE):
        return None
    try:
        return UUID(resource_id.removeprefix(FLOW_RUN_RESOURCE))
    except ValueError:
        return None


def event_state_type(payload: Mapping[str, Any]) -> str | None:
    """The state type (`RUNNING`, `COMPLETED`, ...) a flow-run state event says the run is in
    now: the server's orchestration puts the state it accepted in `validated_state`."""
    validated = payload.get("validated_state")
    if not isinstance(validated, Mapping) or validated.get("type") is None:
        return None
    return str(validated["type"])


def submitted_flow_run_events(flow_run_id: UUID) -> EventFilter:
    """The filter for the event of the worker that submitted a flow run."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    return EventFilter(
        event=EventNameFilter(name=[WORKER_SUBMITTED_EVENT]),
        related=EventRelatedFilter(id=[f"{FLOW_RUN_RESOURCE}{flow_run_id}"]),
    )


def submitting_worker(event: Event) -> str | None:
    """The name of the worker a `WORKER_SUBMITTED_EVENT` comes from."""
    return event.resource.name


def process_pool_template() -> dict[str, Any]:
    """The base job template of a process work pool, as `prefect work-pool create --type
    process` makes it."""
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def module_entrypoint_type() -> Any:
    """The entrypoint type that makes `RunnerDeployment.from_flow` register a flow by its module
    path (`flows.wait.wait`) rather than by a file path on this machine."""
    from prefect.types.entrypoint import EntrypointType

    return EntrypointType.MODULE_PATH


def file_entrypoint_type() -> Any:
    """The entrypoint type that registers a flow by its file (`path/to/file.py:function`)."""
    from prefect.types.entrypoint import EntrypointType

    return EntrypointType.FILE_PATH


# -- running a deployment's flow run in this process (`watcher/worker.py`) ---------------------


async def load_deployed_flow(flow_run: FlowRun) -> Flow[..., Any]:
    """The flow of a flow run's deployment, imported in this process: what a flow-run process
    started by a process worker loads first (`prefect.flows.load_flow_from_flow_run`).

    That function takes the client of the current client context, or else makes one it never
    closes (a leaked connection per call): so it runs in a client context, entered here if
    there is none.
    """
    from prefect.context import AsyncClientContext
    from prefect.flows import load_flow_from_flow_run

    async with AsyncClientContext.get_or_create():
        return await load_flow_from_flow_run(flow_run, use_placeholder_flow=False)


async def run_flow_run_here(flow: Flow[..., Any], flow_run: FlowRun) -> Any:
    """Run an existing flow run of an async flow with Prefect's engine in this event loop, as
    the flow-run process of a process worker would (`prefect.flow_engine.run_flow`, with the
    run's own parameters); return its final state."""
    from prefect.flow_engine import run_flow

    if not flow.isasync or flow.isgenerator:
        raise TypeError(f"flow {flow.name!r} is not an async function: it cannot run here")
    return await run_flow(flow, flow_run=flow_run, return_type="state")  # type: ignore[misc]


def with_function(flow: Any, fn: Callable[..., Any]) -> Any:
    """A copy of `flow` that calls `fn` (a `functools.wraps` wrapper of the flow's function).

    Prefect has no option for this; its engine calls `Flow.fn`, and reads the parameters from
    that function's signature, which `functools.wraps` carries over (`__wrapped__`). dropflow
    wraps an async flow's function to stop it at its timeout itself (see
    `watcher.running.registered`).
    """
    copy = flow.with_options()
    copy.fn = fn
    return copy
