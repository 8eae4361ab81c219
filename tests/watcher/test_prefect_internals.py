"""Every assumption `watcher/prefect_internals.py` makes about Prefect, one test each: a
Prefect upgrade that breaks one fails here, by name."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flows.wait import wait
from tests.userflows import nap_async
from watcher import prefect_internals as internals


def test_server_app_is_the_factory_prefect_serves() -> None:
    module, _, name = internals.SERVER_APP.partition(":")
    factory = getattr(__import__(module, fromlist=[name]), name)
    assert callable(factory)
    assert "ephemeral" in inspect.signature(factory).parameters


def test_private_final_flag_is_read_by_create_app() -> None:
    from prefect.server.api.server import create_app

    for name in internals.SERVER_PROCESS_ENVIRONMENT:
        if name.startswith("PREFECT__"):
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
    await internals.flush_prefect(5)


def test_configure_prefect_logging_puts_prefects_console_handler_on_root() -> None:
    code = (
        "import logging\n"
        "from watcher.prefect_internals import configure_prefect_logging\n"
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


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _prefect_records() -> Iterator[list[logging.LogRecord]]:
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in internals.TIMEOUT_LINES]
    for log in loggers:
        log.addHandler(handler)
    try:
        yield handler.records
    finally:
        for log in loggers:
            log.removeHandler(handler)


@pytest.mark.anyio
async def test_the_timeout_filter_drops_exactly_the_timeout_errors(prefect_api: str) -> None:
    keep = internals.TimeoutRecordFilter()
    with _prefect_records() as records:
        state = await wait(timeout=0.3, sleep=3, name="times-out", return_state=True)
    assert state.is_cancelled()
    errors = [r for r in records if r.levelno >= logging.ERROR]
    # Prefect logs the expected outcome as errors (else there is nothing to filter) ...
    assert errors, [r.getMessage() for r in records]
    # ... and the filter drops every one of them, and nothing else.
    assert [r.getMessage() for r in errors if keep.filter(r)] == []
    assert all(keep.filter(r) for r in records if r.levelno < logging.ERROR)

    with _prefect_records() as records:
        state = await wait(timeout=5, sleep=0, name="in-time", return_state=True)
    assert state.is_completed()
    assert records and all(keep.filter(r) for r in records)


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
