"""`flows.runlogs`: what it assumes of Prefect's engines (a run that ends Cancelled logs its last
line at ERROR), and that it lowers exactly that line to INFO. Against the shared server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed

from flows.runlogs import FINISHED_CANCELLED, RUN_LOGGERS, CancelledIsNoError, log_cancelled_as_info

pytestmark = pytest.mark.anyio


@task(cache_policy=NO_CACHE, persist_result=False)
async def _ends(cancelled: bool) -> Any:
    return Cancelled(message="task stopped") if cancelled else 1


@flow(persist_result=False)
async def _run(cancelled: bool) -> Any:
    await _ends(cancelled, return_state=True)  # type: ignore[misc]
    return Cancelled(message="flow stopped") if cancelled else Completed()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What Prefect's run loggers pass to their handlers, with no `CancelledIsNoError` on them
    (the wait flow installs one per process): restored at the end."""
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    kept = {log.name: list(log.filters) for log in loggers}
    handler = _Collect()
    for log in loggers:
        log.filters[:] = [f for f in log.filters if not isinstance(f, CancelledIsNoError)]
        log.addHandler(handler)
    try:
        yield handler.records
    finally:
        for log in loggers:
            log.removeHandler(handler)
            log.filters[:] = kept[log.name]


def _lines(records: list[logging.LogRecord]) -> list[tuple[str, str, str]]:
    """Logger, level and message; of a message naming its run (a name drawn at random, a URL),
    only the first word."""
    lines = []
    for record in records:
        text = record.getMessage()
        if not text.startswith("Finished in state "):
            text = text.split(" ")[0]
        lines.append((record.name, record.levelname, text))
    return lines


async def test_prefect_logs_a_cancelled_runs_last_line_as_an_error(
    prefect_api: str, records: list[logging.LogRecord]
) -> None:
    # The assumption: should Prefect log it at INFO (or word it otherwise), the filter is moot.
    state = await _run(True, return_state=True)
    assert state.is_cancelled()
    finished = [line for line in _lines(records) if line[2].startswith(FINISHED_CANCELLED)]
    assert finished == [
        ("prefect.task_runs", "ERROR", "Finished in state Cancelled('task stopped')"),
        ("prefect.flow_runs", "ERROR", "Finished in state Cancelled('flow stopped')"),
    ]


async def test_the_filter_lowers_exactly_that_line_to_info(
    prefect_api: str, records: list[logging.LogRecord]
) -> None:
    await _run(True, return_state=True)
    await _run(False, return_state=True)
    raw = _lines(records)
    records.clear()
    log_cancelled_as_info()
    log_cancelled_as_info()  # once per process, however often called
    for name in RUN_LOGGERS:
        installed = logging.getLogger(name).filters
        assert sum(isinstance(f, CancelledIsNoError) for f in installed) == 1
    await _run(True, return_state=True)
    await _run(False, return_state=True)
    lowered = [
        (name, "INFO" if text.startswith(FINISHED_CANCELLED) else level, text)
        for name, level, text in raw
    ]
    assert _lines(records) == lowered
    assert [line for line in _lines(records) if line[1] == "ERROR"] == []
