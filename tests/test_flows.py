"""End to end: registered flows other than wait, run by `dropflow run` subprocesses against the
shared Prefect server: the example CSV flow, async and sync flows stopped at their timeout,
parameters checked before any run, paths kept inside `files_dir`."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from examples.csv_summary import csv_summary
from tests.conftest import ServiceFactory
from tests.harness import ServiceProcess, claim_folders, wait_until

ROOT = Path(__file__).resolve().parents[1]
FLOWS = {
    "wait": "flows.wait:wait",
    "csv_summary": f"{ROOT / 'examples' / 'csv_summary.py'}:csv_summary",
    "nap_async": f"{ROOT / 'tests' / 'userflows.py'}:nap_async",
    "nap_sync": f"{ROOT / 'tests' / 'userflows.py'}:nap_sync",
    "odd": f"{ROOT / 'tests' / 'userflows.py'}:odd_return",
}
WORK = 60  # seconds of work a timed-out job asks for: far more than any test waits


def _files(tmp_path: Path) -> Path:
    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(ROOT / "examples" / "sales.csv", files / "sales.csv")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    os.symlink(tmp_path / "secret.csv", files / "escape.csv")
    return files


def _start(
    service: ServiceFactory, tmp_path: Path, env: dict[str, str] | None = None, **config: Any
) -> ServiceProcess:
    config = {"flows": FLOWS, "files_dir": str(_files(tmp_path)), **config}
    return service(config, extra_env=env or {})


def _flow_run(prefect_url: str, flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(UUID(flow_run_id))

    with temporary_settings({PREFECT_API_URL: prefect_url}):
        return asyncio.run(read())


def _final(prefect_url: str, flow_run_id: str) -> Any:
    # The result is written when the flow is stopped; Prefect may record it a moment later.
    run = _flow_run(prefect_url, flow_run_id)
    return run if run.state.is_final() else None


def _stopped_before_its_work(svc: ServiceProcess, name: str, prefect_url: str) -> dict[str, Any]:
    result = svc.wait_result(name, timeout=45)
    assert result["status"] == "canceled", result
    assert result["message"].startswith("Stopped at the timeout: flow "), result
    run = wait_until(lambda: _final(prefect_url, result["flow_run_id"]), 30)
    assert run.state.is_cancelled(), run.state
    assert run.state.message == result["message"]
    # Stopped, not waited for: the run ended long before its work would have.
    assert (run.end_time - run.start_time).total_seconds() < WORK / 2
    return result


def test_registered_flows_end_to_end(service: ServiceFactory, tmp_path: Path) -> None:
    svc = _start(service, tmp_path)
    prefect_url = str(svc.api_url)
    jobs = {
        "summary.yaml": "flow: csv_summary\nparameters: {path: sales.csv}\ntimeout: 60\n",
        "wrong-type.yaml": "flow: csv_summary\nparameters: {path: sales.csv, columns: 3}\n",
        "missing.yaml": "flow: csv_summary\nparameters: {delimiter: ';'}\n",
        "unknown.yaml": "flow: csv_summary\nparameters: {path: sales.csv, colums: [a]}\n",
        "dotdot.yaml": "flow: csv_summary\nparameters: {path: ../secret.csv}\n",
        "absolute.yaml": f"flow: csv_summary\nparameters: {{path: '{tmp_path}/secret.csv'}}\n",
        "symlink.yaml": "flow: csv_summary\nparameters: {path: escape.csv}\n",
        "no-such-flow.yaml": "flow: csv_sumary\nparameters: {path: sales.csv}\n",
        "async-late.yaml": f"flow: nap_async\nparameters: {{seconds: {WORK}}}\ntimeout: 1\n",
        "sync-late.yaml": f"flow: nap_sync\nparameters: {{seconds: {WORK}}}\ntimeout: 1\n",
        "sync-done.yaml": "flow: nap_sync\nparameters: {seconds: 0, label: s}\ntimeout: 30\n",
        "not-json.yaml": "flow: odd\nparameters: {kind: set}\ntimeout: 30\n",
        "too-large.yaml": "flow: odd\nparameters: {kind: large}\ntimeout: 30\n",
        "plain-wait.yaml": "timeout: 5\nsleep: 0\n",
    }
    for name, text in jobs.items():
        svc.drop(name, text)

    summary = svc.wait_result("summary.yaml", timeout=60)
    assert summary["status"] == "completed", summary
    assert summary["flow"] == "csv_summary" and summary["flow_run_name"] == "summary"
    assert summary["return_value"] == csv_summary.fn(ROOT / "examples" / "sales.csv")

    def error(name: str) -> str:
        result = svc.wait_result(name, timeout=45)
        assert result["status"] == "error", result
        assert "flow_run_id" not in result, "a bad job must never start a flow run"
        message: str = result["message"]
        assert message.startswith(f"{name}: ")
        return message[len(name) + 2 :]

    assert error("wrong-type.yaml") == "parameters.columns: must be a list or null, got 3"
    assert error("missing.yaml") == "parameters.path: missing; flow 'csv_summary' requires it"
    assert error("unknown.yaml") == (
        "parameters.colums: flow 'csv_summary' has no such parameter (did you mean 'columns'?); "
        "it takes path, delimiter, columns"
    )
    assert error("dotdot.yaml") == (
        "parameters.path: must stay inside the files folder; '../secret.csv' leads outside it"
    )
    assert error("absolute.yaml").startswith(
        "parameters.path: must be relative to the files folder, not absolute"
    )
    assert error("symlink.yaml") == (
        "parameters.path: must stay inside the files folder; 'escape.csv' leads outside it "
        "through a symbolic link"
    )
    assert error("no-such-flow.yaml").startswith(
        "flow: no flow named 'csv_sumary' is registered here (did you mean 'csv_summary'?)"
    )

    _stopped_before_its_work(svc, "async-late.yaml", prefect_url)
    _stopped_before_its_work(svc, "sync-late.yaml", prefect_url)

    done = svc.wait_result("sync-done.yaml", timeout=45)
    assert done["status"] == "completed", done
    assert done["return_value"] == {"slept": 0, "label": "s"}
    assert _flow_run(prefect_url, done["flow_run_id"]).state.is_completed()

    not_json = svc.wait_result("not-json.yaml", timeout=45)
    assert not_json["status"] == "completed" and "return_value" not in not_json
    assert not_json["return_note"].startswith("the flow returned set, which is not JSON")
    too_large = svc.wait_result("too-large.yaml", timeout=45)
    assert "return_value" not in too_large
    assert too_large["return_note"] == (
        "the flow returned 100002 bytes as JSON, more than max_return_bytes (16384)"
    )

    wait = svc.wait_result("plain-wait.yaml", timeout=45)
    assert (wait["status"], wait["flow"], wait["sleep"]) == ("completed", "wait", 0)
    assert "return_value" not in wait
    # An expected outcome is no error in the service's log.
    assert "ERROR" not in svc.log(), svc.log()


def test_a_sync_flow_is_stopped_without_a_fork_server(
    service: ServiceFactory, tmp_path: Path
) -> None:
    # Where there is no fork server (Windows; forced here by the portable mode), each sync
    # flow runs in a freshly spawned interpreter.
    svc = _start(service, tmp_path, env={"DROPFLOW_PORTABLE": "1"})
    svc.drop("late.yaml", f"flow: nap_sync\nparameters: {{seconds: {WORK}}}\ntimeout: 1\n")
    svc.drop("done.yaml", "flow: nap_sync\nparameters: {seconds: 0}\ntimeout: 60\n")
    _stopped_before_its_work(svc, "late.yaml", str(svc.api_url))
    done = svc.wait_result("done.yaml", timeout=60)
    assert done["status"] == "completed" and done["return_value"] == {"slept": 0, "label": "nap"}


def test_a_bad_entrypoint_stops_the_service_with_exit_2(
    service: ServiceFactory, tmp_path: Path
) -> None:
    svc = service({"flows": {"mine": "no_such_package.flows:mine"}}, start=False)
    svc.start(wait=False)
    assert svc.proc is not None
    assert svc.proc.wait(timeout=90) == 2
    assert (
        "flows: mine: cannot load no_such_package.flows:mine: ModuleNotFoundError: "
        "No module named 'no_such_package'" in svc.log()
    )


def _runs_named(prefect_url: str, name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )

    with temporary_settings({PREFECT_API_URL: prefect_url}):
        return asyncio.run(read())


@pytest.mark.parametrize("flow", ["nap_sync", "nap_async"])
def test_a_stop_ends_a_running_flow_and_says_so_in_prefect(
    service: ServiceFactory, tmp_path: Path, flow: str
) -> None:
    # A sync flow's process is killed, an async flow's coroutine cancelled: neither goes on
    # after the service (the job runs again at the next start), nor shows Running for ever.
    svc = _start(service, tmp_path, shutdown_grace=0)
    name = f"flowstop-{flow}"
    svc.drop(f"{name}.yaml", f"flow: {flow}\nparameters: {{seconds: {WORK}}}\ntimeout: {WORK}\n")
    prefect_url = str(svc.api_url)

    def running() -> Any:
        runs = [r for r in _runs_named(prefect_url, name) if r.state.is_running()]
        return runs[0] if runs else None

    started = wait_until(running, 60, interval=0.2)
    assert svc.stop(timeout=60) == 0
    assert not svc.result_path(f"{name}.yaml").exists()
    run = _flow_run(prefect_url, str(started.id))
    assert run.state.is_crashed(), run.state
    if flow == "nap_sync":
        assert "dropflow stopped while it ran" in (run.state.message or "")
    assert claim_folders(svc.processing), "the job is left for the next start"
