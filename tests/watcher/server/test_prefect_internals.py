"""Every assumption `watcher/prefect_internals.py` makes about Prefect, one test each: a
Prefect upgrade that breaks one fails here, by name."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from flows.wait import wait
from tests.cluster import Cluster
from tests.userflows import nap_async
from watcher.server import prefect_internals as internals


def test_server_app_is_the_factory_prefect_serves() -> None:
    module, _, name = internals.SERVER_APP.partition(":")
    factory = getattr(__import__(module, fromlist=[name]), name)
    assert callable(factory)
    assert "ephemeral" in inspect.signature(factory).parameters


def test_private_final_flag_is_read_by_create_app() -> None:
    from prefect.server.api.server import create_app

    private = [n for n in internals.SERVER_PROCESS_ENVIRONMENT if n.startswith("PREFECT__")]
    assert private == ["PREFECT__SERVER_FINAL"]
    for name in private:
        assert name in inspect.getsource(create_app), f"{name} is no longer read"


def _enabled_services(extra_env: dict[str, str]) -> dict[str, bool]:
    """Which of Prefect's perpetual server services a server with `extra_env` would run."""
    code = (
        "import json\n"
        "from prefect.server.services.perpetual_services import get_perpetual_services\n"
        "print(json.dumps({c.function.__name__: [bool(c.enabled_getter()), c.run_in_ephemeral]"
        " for c in get_perpetual_services(ephemeral=False)}))\n"
    )
    env = {**os.environ, **extra_env}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    raw: dict[str, list[bool]] = json.loads(out.stdout.strip().splitlines()[-1])
    return {name: enabled for name, (enabled, ephemeral) in raw.items() if not ephemeral}


def test_the_settings_turn_off_every_service_ephemeral_mode_leaves_out() -> None:
    # Without them some run (the assumption that they are on by default holds) ...
    assert any(_enabled_services({}).values())
    # ... with them, none of the services that ephemeral mode leaves out runs.
    off = _enabled_services(dict(internals.EPHEMERAL_ONLY_SERVICES_OFF))
    assert [name for name, enabled in off.items() if enabled] == []
    # history_days turns on Prefect's own flow-run vacuum, and only that (and its orphans).
    vacuum = _enabled_services(
        {
            **internals.EPHEMERAL_ONLY_SERVICES_OFF,
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        }
    )
    assert sorted(name for name, enabled in vacuum.items() if enabled) == [
        "schedule_orphan_vacuum_tasks",
        "schedule_vacuum_tasks",
    ]


@pytest.mark.anyio
async def test_the_engine_reuses_the_shared_client_context(prefect_api: str) -> None:
    from prefect.context import AsyncClientContext, SyncClientContext

    async with contextlib.AsyncExitStack() as stack:
        shared = await internals.enter_shared_clients(stack)
        async with AsyncClientContext.get_or_create() as again:
            assert again is shared
        sync_shared = SyncClientContext.get()
        assert sync_shared is not None
        with SyncClientContext.get_or_create() as sync_again:
            assert sync_again is sync_shared


@pytest.mark.anyio
async def test_flush_prefect_sends_queued_logs(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    async with get_client() as client:
        flow_run = await client.create_flow_run(wait, parameters={"timeout": 1, "sleep": 0})
        text = f"queued line {uuid.uuid4()}"
        record = logging.LogRecord("prefect.flow_runs", logging.INFO, __file__, 1, text, (), None)
        record.flow_run_id = flow_run.id
        APILogHandler().emit(record)
        # Prefect's log worker sends in batches every 2 s: without the flush, not yet there.
        await internals.flush_prefect(5)
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    assert text in [log.message for log in logs]


def test_configure_prefect_logging_puts_prefects_console_handler_on_root() -> None:
    code = (
        "import logging\n"
        "from watcher.server.prefect_internals import configure_prefect_logging\n"
        "configure_prefect_logging()\n"
        "from prefect.logging.handlers import PrefectConsoleHandler\n"
        "print([type(h).__name__ for h in logging.getLogger().handlers])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "PrefectConsoleHandler" in out


def test_an_empty_ui_url_means_no_view_at_link(prefect_api: str) -> None:
    from prefect.settings import PREFECT_UI_URL, temporary_settings
    from prefect.utilities.urls import url_for

    run_id = str(uuid.uuid4())
    # By default the UI URL is derived from the API URL: the "View at" link Prefect prints.
    assert url_for("flow-run", obj_id=run_id) == (
        f"{prefect_api.removesuffix('/api')}/runs/flow-run/{run_id}"
    )
    with temporary_settings({PREFECT_UI_URL: ""}):
        assert url_for("flow-run", obj_id=run_id) is None


# -- events and workers (`runner: deployment`) ------------------------------------------------


@pytest.mark.anyio
async def test_flow_run_state_events_of_a_deployment_name_the_run_and_its_state_type(
    prefect_api: str,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.clients import get_events_subscriber
    from prefect.states import Completed, Running

    from watcher.running.deployment.registration import deploy

    deployed = await asyncio.wait_for(deploy("internals", "wait/internals"), 60)
    deployment_id = uuid.UUID(deployed.deployments[0].deployment_id)
    seen: list[tuple[uuid.UUID | None, str | None]] = []
    async with (
        get_client() as client,
        get_events_subscriber(filter=internals.flow_run_events(deployment_id)) as events,
    ):
        # A run of no deployment: its events must not come through the filter.
        other = await client.create_flow_run(wait, name="no-deployment")
        await client.set_flow_run_state(other.id, Completed(), force=True)
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"timeout": 1, "sleep": 0}, name="of-deployment"
        )
        for state in (Running(), Completed()):
            await client.set_flow_run_state(run.id, state, force=True)

        async def three_events() -> None:
            async for event in events:
                seen.append(
                    (
                        internals.event_flow_run_id(event.resource.id),
                        internals.event_state_type(event.payload),
                    )
                )
                if len(seen) == 3:
                    return

        await asyncio.wait_for(three_events(), 30)
    assert seen == [(run.id, "SCHEDULED"), (run.id, "RUNNING"), (run.id, "COMPLETED")]
    # Anything else reads as "not a flow run state".
    assert internals.event_flow_run_id(f"prefect.deployment.{deployment_id}") is None
    assert internals.event_flow_run_id("prefect.flow-run.not-a-uuid") is None
    assert internals.event_state_type({"intended": {"to": "RUNNING"}}) is None


@pytest.mark.cluster
@pytest.mark.timeout(240)
@pytest.mark.anyio
async def test_a_worker_names_itself_in_the_event_of_the_run_it_submitted(
    cluster: Cluster,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import arun_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: cluster.url}):
        async with get_client() as client:
            run = await arun_deployment(
                "wait/dropflow",
                client=client,
                parameters={"timeout": 5, "sleep": 0, "name": "internals-worker"},
                timeout=0,
            )

            async def submitted() -> Any:
                while True:
                    page = await client.read_events(
                        internals.submitted_flow_run_events(run.id), limit=5
                    )
                    if page.events:
                        return page.events
                    await asyncio.sleep(0.2)

            events = await asyncio.wait_for(submitted(), 180)
    assert len(events) == 1
    assert internals.submitting_worker(events[0]) in {w.name for w in cluster.workers}


def test_process_workers_serve_the_process_pool_type_with_its_template() -> None:
    from prefect.utilities.dispatch import lookup_type
    from prefect.workers.base import BaseWorker
    from prefect.workers.process import ProcessWorker

    # What `prefect worker start --type process` looks up.
    assert lookup_type(BaseWorker, internals.PROCESS_POOL_TYPE) is ProcessWorker
    template = internals.process_pool_template()
    assert "{{ command }}" in json.dumps(template["job_configuration"])
    assert "command" in template["variables"]["properties"]


def test_the_module_entrypoint_type_registers_the_flow_by_its_module_path() -> None:
    from prefect.deployments.runner import RunnerDeployment

    deployment = RunnerDeployment.from_flow(
        wait, name="internals", entrypoint_type=internals.module_entrypoint_type()
    )
    assert deployment.entrypoint == "flows.wait.wait"


@pytest.mark.anyio
async def test_a_deployed_flow_run_loads_and_runs_in_this_event_loop(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    from watcher.running.deployment.registration import deploy

    deployed = await asyncio.wait_for(deploy("internals", "wait/internals"), 60)
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            uuid.UUID(deployed.deployments[0].deployment_id),
            parameters={"timeout": 0.5, "sleep": 3, "name": "here"},
            name="here",
        )
        flow = await asyncio.wait_for(internals.load_deployed_flow(run), 30)
        assert flow is wait
        state = await asyncio.wait_for(internals.run_flow_run_here(flow, run), 30)
        assert state.is_cancelled(), state
        again = await client.read_flow_run(run.id)
    # The run itself ran, with its own parameters: no new flow run.
    assert again.state is not None and again.state.is_cancelled()
    assert again.state.message == "Canceled: the work (3 s) ran past the 0.5 s timeout."


@pytest.mark.anyio
async def test_a_flow_copy_calls_the_function_it_is_given(prefect_api: str) -> None:
    # The in-process runner stops an async flow at its timeout by wrapping its function.
    calls: list[tuple[Any, ...]] = []

    @functools.wraps(nap_async.fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args + tuple(sorted(kwargs.items())))
        return await nap_async.fn(*args, **kwargs)

    copy = internals.with_function(nap_async, wrapper)
    state = await copy(0, label="x", return_state=True)
    assert state.is_completed() and await state.aresult() == {"slept": 0, "label": "x"}
    assert calls and nap_async.fn is not wrapper, calls
    # Prefect still reads the parameters from the flow function's signature.
    assert list(copy.parameters.properties) == ["seconds", "label"]
    assert copy.name == nap_async.name and copy.isasync


def _flush_record(message: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(
        internals.RECORDER_LOGGER, logging.ERROR, __file__, 1, message, None, exc_info
    )


def test_the_recorder_logs_a_flush_cut_by_its_stop_as_the_filter_expects() -> None:
    """The assumption `StoppedFlushFilter` rests on: Prefect's task-run recorder logs a cut
    flush under this logger, with this message, and retries the batch in its final flush."""
    from prefect.server.services import task_run_recorder

    assert task_run_recorder.logger.name == internals.RECORDER_LOGGER
    source = inspect.getsource(task_run_recorder.consumer)
    assert (
        'f"Error flushing {len(batch)} events ({to_retry} to retry, {dropped} dropped)"' in source
    )
    assert "asyncio.CancelledError" in source and "await queue.put(item)" in source
    # The final flush, after the periodic one put its batch back.
    assert source.rstrip().endswith("await flush()")


def test_the_stopped_flush_filter_drops_exactly_a_retried_cut_flush() -> None:
    keep = internals.StoppedFlushFilter()
    cut = asyncio.CancelledError()
    assert not keep.filter(_flush_record("Error flushing 2 events (2 to retry, 0 dropped)", cut))
    # Events dropped, another error, or no error: still logged.
    assert keep.filter(_flush_record("Error flushing 3 events (2 to retry, 1 dropped)", cut))
    assert keep.filter(_flush_record("Error flushing 2 events (2 to retry, 0 dropped)", OSError()))
    assert keep.filter(_flush_record("Error flushing 2 events (2 to retry, 0 dropped)", None))
    assert keep.filter(_flush_record("Dropping event x after 3 failed attempts", cut))


def test_the_migrations_fingerprint_reads_the_folder_alembic_runs_for_postgresql() -> None:
    import prefect
    from alembic.script import ScriptDirectory
    from prefect.server.database.orm_models import AsyncPostgresORMConfiguration

    versions = AsyncPostgresORMConfiguration().versions_dir
    assert versions == Path(prefect.__file__).parent.joinpath(*internals.MIGRATIONS_FOLDER)
    # The head revision alembic upgrades to is one of the files named in the fingerprint.
    script = ScriptDirectory(str(versions.parent.parent), version_locations=[str(versions)])
    head = script.get_revision(script.get_current_head())
    assert head is not None and Path(head.path).parent == versions
    assert len(internals.migrations_fingerprint()) == 16


def test_a_database_url_set_after_the_import_is_the_servers() -> None:
    # In a fresh interpreter: Prefect reads its settings once, at import.
    url = "postgresql+asyncpg://postgres:@/postgres?host=/nowhere"
    code = (
        "import os\n"
        "from watcher.server import prefect_internals as internals\n"
        "internals.import_server_app()\n"
        "from prefect.server.database import provide_database_interface\n"
        "from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL\n"
        f"internals.use_database_url({url!r})\n"
        "print(PREFECT_API_DATABASE_CONNECTION_URL.value())\n"
        "print(provide_database_interface().database_config.connection_url)\n"
    )
    env = {k: v for k, v in os.environ.items() if "DATABASE_CONNECTION_URL" not in k}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-2:] == [url, url]


def test_migrate_on_start_is_the_setting_create_app_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api.server import create_app
    from prefect.settings import Settings

    from watcher.server.process import MIGRATE_ON_START

    # create_app runs the migrations only when this setting is true ...
    assert "PREFECT_API_DATABASE_MIGRATE_ON_START" in inspect.getsource(create_app)
    # ... and the variable dropflow sets is that setting.
    monkeypatch.setenv(MIGRATE_ON_START, "false")
    assert Settings().server.database.migrate_on_start is False


def test_prefects_server_side_clients_get_the_app_create_app_once_built() -> None:
    # In a fresh interpreter: the adapter replaces a module attribute of Prefect's for good.
    code = (
        "import prefect.server.api.server as server\n"
        "from watcher.server import prefect_internals as internals\n"
        "calls = []\n"
        "prefects = server.create_app\n"
        "def counted(*args, **kwargs):\n"
        "    calls.append(args or kwargs)\n"
        "    return prefects(*args, **kwargs)\n"
        "server.create_app = counted\n"
        # Prefect's own cache gives the same app again: the one pinned is the one it would give.
        "assert server.create_app() is server.create_app()\n"
        "calls.clear()\n"
        "internals.create_app_once()\n"
        "app = server.create_app()\n"
        "from prefect.server.api.clients import OrchestrationClient\n"
        "from prefect.server.events.clients import PrefectServerEventsAPIClient\n"
        "for client in (OrchestrationClient(), PrefectServerEventsAPIClient()):\n"
        "    assert client._http_client._transport.app is app\n"
        "print(len(calls))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # Prefect built (or looked up) the app once; its clients asked again, and got it for free.
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_the_block_settings_are_the_ones_create_app_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api import server
    from prefect.settings import Settings

    from watcher.server.process import MEMOIZE_BLOCKS, REGISTER_BLOCKS

    # create_app registers the block types only when the first is true, and hashes the block
    # registry (importing every collection) first only when the second is.
    assert "PREFECT_API_BLOCKS_REGISTER_ON_START" in inspect.getsource(server.create_app)
    memoize = inspect.getsource(server._memoize_block_auto_registration)
    assert "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION" in memoize
    assert "load_prefect_collections" in memoize
    # Each variable dropflow sets or respects, new name and old, is that setting.
    for register, memo in zip(REGISTER_BLOCKS, MEMOIZE_BLOCKS, strict=True):
        monkeypatch.setenv(register, "false")
        monkeypatch.setenv(memo, "false")
        settings = Settings().server
        assert settings.register_blocks_on_start is False
        assert settings.memoize_block_auto_registration is False
        monkeypatch.delenv(register)
        monkeypatch.delenv(memo)
    assert Settings().server.register_blocks_on_start is True


def _first_run_imports(prefect_api: str, warm: bool) -> set[str]:
    """The modules a first run of the wait flow imports, in a fresh interpreter that imported
    the flow (as the service does) and, if `warm`, `import_engine`."""
    code = (
        "import asyncio, json, sys\n"
        "from flows.wait import wait\n"
        "from watcher.server import prefect_internals as internals\n"
        f"if {warm}:\n"
        "    internals.import_engine()\n"
        "before = set(sys.modules)\n"
        "asyncio.run(wait(timeout=5, sleep=0))\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_engine_imports_what_the_first_flow_run_would(prefect_api: str) -> None:
    # Each module named is one the first run imports (the list is not stale) ...
    cold = _first_run_imports(prefect_api, warm=False)
    assert set(internals.ENGINE_MODULES) <= cold
    # ... and after the warm-up the first run imports nothing more of Prefect's or FastAPI's:
    # a module a new Prefect imports there is named here, to add to the list.
    warm = _first_run_imports(prefect_api, warm=True)
    assert {name for name in warm if name.split(".")[0] in ("prefect", "fastapi")} == set()
