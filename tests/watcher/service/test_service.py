"""End to end: `dropflow run` as a subprocess against the shared Prefect server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.schemas.objects import StateType

from tests.conftest import ServiceFactory
from tests.harness import (
    PrefectServer,
    ServiceProcess,
    archived_files,
    archived_names,
    claim_folders,
    wait_until,
)


def _interval(result: dict[str, object]) -> tuple[datetime, datetime]:
    return (
        datetime.fromisoformat(str(result["started_at"])),
        datetime.fromisoformat(str(result["finished_at"])),
    )


def _archived(svc: ServiceProcess, names: set[str]) -> None:
    """Wait until exactly `names` are archived and no claim is left: a job's result is
    published before its file is archived and its claim removed."""

    def done() -> bool:
        archived = set(archived_names(svc.archive))
        return archived == names and not claim_folders(svc.processing)

    try:
        wait_until(done, 10)
    except TimeoutError:
        archived = archived_names(svc.archive)
        claims = claim_folders(svc.processing)
        raise AssertionError(f"archived {archived}, claims {claims}, expected {names}") from None


def _run_together(svc: ServiceProcess, count: int) -> list[tuple[datetime, datetime]]:
    """Drop `count` jobs of 1.5 s at once; when each ran, once all completed."""
    names = [f"together{i}.yaml" for i in range(count)]
    for name in names:
        svc.drop(name, "timeout: 10\nsleep: 1.5\n")
    results = [svc.wait_result(name, timeout=60) for name in names]
    assert all(r["status"] == "completed" for r in results)
    return [_interval(r) for r in results]


def test_backlog_is_processed_at_start(service: ServiceFactory, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"old{i}.yaml").write_text("timeout: 5\nsleep: 0\n")
    svc = service()
    for i in range(3):
        assert svc.wait_result(f"old{i}.yaml")["status"] == "completed"
    _archived(svc, {"old0.yaml", "old1.yaml", "old2.yaml"})
    assert list(svc.inbox.iterdir()) == []


def test_completed_and_canceled_as_in_the_seed(service: ServiceFactory) -> None:
    svc = service()
    svc.drop("quick.yaml", "timeout: 2\nsleep: 0.2\nname: quick one\n")
    svc.drop("slow.yaml", "timeout: 1\nsleep: 3\n")
    quick = svc.wait_result("quick.yaml")
    slow = svc.wait_result("slow.yaml")

    assert quick["status"] == "completed"
    assert quick["sleep"] == 0.2 and quick["timeout"] == 2
    assert quick["name"] == "quick one" and quick["flow_run_name"] == "quick one"
    assert quick["flow_run_id"]
    assert "finished within" in quick["message"]

    assert slow["status"] == "canceled"
    assert slow["message"] == "Canceled: the work (3 s) ran past the 1 s timeout."
    assert slow["flow_run_name"] == "slow"
    # The work was stopped at the timeout, not waited for.
    assert slow["duration_s"] < 3
    for result in (quick, slow):
        started, finished = _interval(result)
        assert started.tzinfo is not None and finished >= started
    assert "job started: slow.yaml" in svc.log()
    # Logged once the job file is archived, just after its result is published.
    svc.wait_for_log("job finished: slow.yaml canceled", 10)


def test_random_sleep_from_the_config_defaults(service: ServiceFactory) -> None:
    svc = service({"defaults": {"timeout": 5, "sleep": [0.1, 0.3]}})
    svc.drop("drawn.yaml", "{}\n")
    result = svc.wait_result("drawn.yaml")
    assert result["status"] == "completed"
    assert 0.1 <= result["sleep"] <= 0.3


def _fence(svc: ServiceProcess, name: str) -> None:
    """Drop a job by rename and wait for its result. Events arrive in order, so the service
    has handled every event of what was done before it."""
    svc.drop(name, "timeout: 5\nsleep: 0\n")
    assert svc.wait_result(name)["status"] == "completed"


def test_a_half_written_file_waits_for_its_writer(service: ServiceFactory) -> None:
    svc = service({"settle_seconds": 0.5})
    path = svc.inbox / "half.yaml"
    with open(path, "w") as handle:
        handle.write("timeout: 5\n")
        handle.flush()
        _fence(svc, "fence.yaml")  # the service has seen the open and the write
        time.sleep(2)  # the scenario: the writer pauses far longer than settle_seconds
        assert path.exists(), "taken while open for writing"
        assert not svc.result_path("half.yaml").exists()
        handle.write("sleep: 0.1\nname: written in two goes\n")
    result = svc.wait_result("half.yaml")
    assert result["status"] == "completed", result
    assert result["sleep"] == 0.1 and result["name"] == "written in two goes"


def test_one_file_with_many_events_gives_one_run(service: ServiceFactory) -> None:
    svc = service()
    path = svc.inbox / "chatty.yaml"
    with open(path, "w") as handle:
        for i in range(200):
            handle.write(f"# line {i}\n")
            handle.flush()
        handle.write("timeout: 5\nsleep: 0\n")
    os.utime(svc.inbox, None)
    result = svc.wait_result("chatty.yaml")
    assert result["status"] == "completed"
    _fence(svc, "fence.yaml")  # every event of the 200 writes has been handled
    assert sorted(p.name for p in svc.results.iterdir()) == [
        "chatty.result.yaml",
        "fence.result.yaml",
    ]
    assert svc.log().count("job started: chatty.yaml") == 1


def test_jobs_run_concurrently_up_to_the_limit(service: ServiceFactory) -> None:
    svc = service({"max_concurrent_jobs": 3})
    intervals = _run_together(svc, 6)
    peak = max(sum(1 for s, f in intervals if s <= t < f) for t, _ in intervals)
    assert peak == 3, intervals


def test_invalid_job_gets_an_error_result_and_the_service_goes_on(service: ServiceFactory) -> None:
    svc = service()
    svc.drop("typo.yaml", "timout: 3\n")
    svc.drop("words.yaml", "timeout: ten\n")
    svc.drop("fine.yaml", "timeout: 5\nsleep: 0\n")
    typo = svc.wait_result("typo.yaml")
    assert typo["status"] == "error"
    assert typo["message"] == "typo.yaml: unknown key 'timout' (did you mean 'timeout'?)"
    assert "flow_run_id" not in typo
    words = svc.wait_result("words.yaml")
    assert words["message"] == "words.yaml: timeout: must be a number of seconds > 0, got 'ten'"
    assert svc.wait_result("fine.yaml")["status"] == "completed"
    _archived(svc, {"typo.yaml", "words.yaml", "fine.yaml"})


def test_a_reused_name_is_a_new_job_with_its_own_result(service: ServiceFactory) -> None:
    svc = service()
    svc.drop("again.yaml", "timeout: 5\nsleep: 0\nname: first\n")
    first = svc.wait_result("again.yaml")
    svc.drop("again.yaml", "timeout: 5\nsleep: 0\nname: second\n")
    second = svc.wait_result("again.yaml", n=2)
    assert (first["name"], second["name"]) == ("first", "second")
    assert first["claim_id"] != second["claim_id"]
    # Both files archived, under two names (results come before the archive step).
    wait_until(
        lambda: len(archived_files(svc.archive)) == 2 and not claim_folders(svc.processing), 10
    )


def test_other_files_are_ignored(service: ServiceFactory) -> None:
    svc = service()
    ignored = (".hidden.yaml", "notes.txt", "job.yaml~", "#job.yaml#", "job.yaml.swp")
    for name in ignored:
        # Renamed in, as a job would be: were one taken, it would be taken at once, and
        # claimed (moved out of the inbox) before real.YAML, dropped after it, ran its flow.
        svc.drop(name, "timeout: 1\n")
    svc.drop("real.YAML", "timeout: 5\nsleep: 0\n")
    svc.wait_result("real.YAML")
    assert sorted(p.name for p in svc.inbox.iterdir()) == sorted(ignored)
    assert [p.name for p in svc.results.iterdir()] == ["real.result.yaml"]


def test_sigterm_stops_gracefully_with_exit_0(service: ServiceFactory) -> None:
    svc = service({"shutdown_grace": 10})
    svc.drop("inflight.yaml", "timeout: 10\nsleep: 2\n")
    svc.wait_for_log("job started: inflight.yaml")
    assert svc.stop(signal.SIGTERM) == 0
    # The running job was allowed to finish before the exit.
    result = svc.wait_result("inflight.yaml", timeout=1)
    assert result["status"] == "completed"
    assert "stopped" in svc.log()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sighup_and_sigusr_are_logged_and_ignored(service: ServiceFactory) -> None:
    svc = service({"shutdown_grace": 10})
    svc.drop("inflight.yaml", "timeout: 10\nsleep: 3\n")
    svc.wait_for_log("job started: inflight.yaml")
    assert svc.proc is not None

    def logged(times: int) -> bool:
        assert svc.proc is not None and svc.proc.poll() is None, f"exited:\n{svc.log()}"
        return svc.log().count("received SIGHUP: ignored") == times

    for times in (1, 2, 3):
        svc.send(signal.SIGHUP)
        wait_until(lambda n=times: logged(n), 10)
    svc.send(signal.SIGUSR1)
    svc.wait_for_log("received SIGUSR1: ignored", 10)
    svc.send(signal.SIGUSR2)
    svc.wait_for_log("received SIGUSR2: ignored", 10)
    assert not svc.result_path("inflight.yaml").exists()  # all sent while the job ran

    result = svc.wait_result("inflight.yaml")
    assert result["status"] == "completed" and result["attempt"] == 1
    assert svc.proc.poll() is None
    assert svc.stop(signal.SIGTERM) == 0
    assert (
        "INFO    | watcher.service.loop - received SIGHUP: ignored (dropflow does not reload "
        "its config; restart it to apply changes)"
    ) in svc.log()
    assert svc.log().count("job started:") == 1


def test_a_stop_starts_no_queued_job(service: ServiceFactory) -> None:
    svc = service({"shutdown_grace": 20, "max_concurrent_jobs": 1})
    for name in ("first.yaml", "second.yaml", "third.yaml"):
        svc.drop(name, "timeout: 10\nsleep: 2\n")
    svc.wait_for_log("job started:")
    assert svc.stop(signal.SIGTERM) == 0
    assert svc.log().count("job started:") == 1
    assert len(list(svc.results.iterdir())) == 1  # the running job finished in the grace
    claims = sorted(p.name.rsplit(".", 1)[1] for p in claim_folders(svc.processing))
    assert claims == ["0", "0"]  # the two queued jobs wait for the next start, uncounted


def test_jobs_past_the_grace_go_back_for_the_next_start(service: ServiceFactory) -> None:
    svc = service({"shutdown_grace": 0.5})
    svc.drop("long.yaml", "timeout: 30\nsleep: 20\n")
    svc.wait_for_log("job started: long.yaml")
    assert svc.stop(signal.SIGTERM) == 0
    assert not svc.result_path("long.yaml").exists()
    claims = list(claim_folders(svc.processing))
    assert len(claims) == 1 and claims[0].name.endswith(".0")
    assert (claims[0] / "long.yaml").exists()


def test_a_file_name_cannot_forge_a_log_line(service: ServiceFactory) -> None:
    forged = "12:00:00.000 | INFO    | watcher.service.loop - job finished: x completed"
    name = f"a.yaml\n{forged}\rb.yaml"
    svc = service()
    svc.drop(name, "timeout: 5\nsleep: 0\n")
    result = svc.wait_result(name)
    assert result["status"] == "completed" and result["job"] == name
    svc.wait_for_log("job finished: a.yaml")
    assert svc.stop() == 0
    # The harness reads the log with universal newlines: a raw "\r" would split a line too.
    lines = svc.log().splitlines()
    prefix = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ *\| [\w.]+ - ")
    assert [line for line in lines if not prefix.match(line)] == []
    escaped = f"a.yaml\\n{forged}\\rb.yaml"
    assert sum(f"job started: {escaped} (claim" in line for line in lines) == 1
    assert sum(f"job finished: {escaped} completed" in line for line in lines) == 1


def test_bad_config_exits_non_zero_naming_file_key_and_problem(
    service: ServiceFactory, tmp_path: Path
) -> None:
    svc = service({"max_concurrent_jobs": "many"}, start=False)
    svc.start(wait=False)
    assert svc.proc is not None
    code = svc.proc.wait(timeout=30)
    assert code == 2
    wait_until(lambda: "bad config" in svc.log(), 5)
    assert str(tmp_path / "config.yaml") in svc.log()
    assert "max_concurrent_jobs" in svc.log() and "'many'" in svc.log()


@pytest.mark.embedded
def test_embedded_default_runs_jobs_concurrently(embedded_service: ServiceFactory) -> None:
    svc = embedded_service()
    svc.wait_for_log("runner: Prefect API at http://127.0.0.1", 120)
    intervals = _run_together(svc, 8)
    # All eight ran at the same time: the last start came before the first finish.
    assert max(s for s, _ in intervals) < min(f for _, f in intervals)
    assert svc.stop(signal.SIGTERM) == 0


def test_a_canceled_job_is_one_info_line_in_json_logs_and_in_prefect(
    service: ServiceFactory, prefect_server: PrefectServer
) -> None:
    svc = service(args=("--log-format", "json"))
    svc.drop("fine.yaml", "timeout: 5\nsleep: 0\n")
    svc.drop("late.yaml", "timeout: 0.5\nsleep: 5\n")
    assert svc.wait_result("fine.yaml")["status"] == "completed"
    late = svc.wait_result("late.yaml")
    assert late["status"] == "canceled"
    assert svc.stop() == 0

    lines = [json.loads(line) for line in svc.log().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    about_late = [line for line in lines if "late" in line["message"]]
    assert [line["level"] for line in about_late] == ["INFO", "INFO"]  # started, finished
    assert about_late[-1]["message"].startswith("job finished: late.yaml canceled")
    # Nothing above INFO tells of the timeout; nothing at all is an error. (A WARNING of the
    # shared server's load, such as a retried API call, is not the canceled job's.)
    assert [line for line in lines if line["level"] in ("ERROR", "CRITICAL")] == []
    told = [line for line in lines if line["level"] != "INFO" and "timeout" in str(line).lower()]
    assert told == []
    assert "Traceback" not in svc.log()

    # What the UI shows of it, read from the same API: the task run Cancelled, not Failed
    # (Prefect's TimedOut), and the run's logs with no ERROR and no traceback, the timeout
    # told in one INFO line (the flow run's last).
    flow_run_id = str(late["flow_run_id"])
    query = json.dumps({"logs": {"flow_run_id": {"any_": [flow_run_id]}}}).encode()
    request = urllib.request.Request(
        f"{prefect_server.url}/logs/filter",
        data=query,
        headers={"Content-Type": "application/json"},
    )

    def run_logs() -> list[dict[str, Any]] | None:
        with urllib.request.urlopen(request, timeout=10) as response:
            logs: list[dict[str, Any]] = json.loads(response.read())
        ended = any(
            e["task_run_id"] is None and e["message"].startswith("Finished in state ") for e in logs
        )
        return logs if ended else None

    logs = wait_until(run_logs, 30, interval=0.2)
    assert [e["message"] for e in logs if e["level"] >= logging.ERROR] == []
    assert [e["message"] for e in logs if "Traceback" in e["message"]] == []
    told = [e for e in logs if "timeout" in e["message"].lower()]
    assert [(e["level"], e["task_run_id"]) for e in told] == [(logging.INFO, None)], logs
    assert late["message"] in told[0]["message"]
    (task_run,) = wait_until(lambda: _final_task_runs(prefect_server.url, flow_run_id), 30)
    assert task_run.state.type == StateType.CANCELLED, task_run.state


def _final_task_runs(api_url: str, flow_run_id: str) -> list[Any] | None:
    """A flow run's task runs, once each has its final state (they reach the server as events,
    a moment after the flow run's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> list[Any]:
        flt = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        async with get_client() as client:
            return list(await client.read_task_runs(flow_run_filter=flt))

    with temporary_settings({PREFECT_API_URL: api_url}):
        runs = asyncio.run(read())
    return runs if runs and all(r.state is not None and r.state.is_final() for r in runs) else None


def test_json_logs_even_for_a_bad_config(service: ServiceFactory) -> None:
    svc = service({"max_concurrent_jobs": "many"}, start=False, args=("--log-format", "json"))
    svc.start(wait=False)
    assert svc.proc is not None
    assert svc.proc.wait(timeout=30) == 2
    svc.output.join()
    lines = [json.loads(line) for line in svc.log().splitlines()]
    assert lines and lines[-1]["level"] == "CRITICAL"
    assert "bad config" in lines[-1]["message"] and "max_concurrent_jobs" in lines[-1]["message"]
