"""One job's pipeline in-process: real folders, a runner double, no Prefect."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from watcher.config.registry import Registry
from watcher.config.settings import Settings, load_config
from watcher.folders.claims import Claim, ClaimStore
from watcher.folders.results import Result, dump, read_result
from watcher.running.contract import RunOutcome, RunRequest
from watcher.service.gate import RunGate, Slots
from watcher.service.inbox import Inbox
from watcher.service.pipeline import JobPipeline


class _Runner:
    """Implements `watcher.running.contract.Runner`; records what it is asked to run."""

    def __init__(self) -> None:
        self.requests: list[RunRequest] = []

    async def start(self) -> str:
        return "double"

    async def run(self, request: RunRequest) -> RunOutcome:
        self.requests.append(request)
        return RunOutcome("completed", "ran")

    async def close(self) -> None:
        pass


class _ServiceLines(logging.Handler):
    """The service's log messages (its logger may not propagate: the CLI sets it up so)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Gate(RunGate):
    """A gate that tells when a job starts waiting for a run slot, and what it asked with."""

    def __init__(self, slots: int) -> None:
        super().__init__(Slots(slots, asyncio.Event()))
        self.entered = asyncio.Event()
        self.asked: list[tuple[str, int]] = []

    async def take_slot(self, name: str = "", mtime_ns: int = 0) -> bool:
        self.asked.append((name, mtime_ns))
        self.entered.set()
        return await super().take_slot(name, mtime_ns)


def _settings(tmp_path: Path, max_attempts: int = 3) -> Settings:
    config = tmp_path / "config.yaml"
    config.write_text(f"max_attempts: {max_attempts}\ndefaults: {{timeout: 5, sleep: 0}}\n")
    settings = load_config(config)
    for folder in (settings.inbox, settings.results, settings.archive, settings.processing):
        folder.mkdir(parents=True, exist_ok=True)
    return settings


def _pipeline(settings: Settings, runner: _Runner, gate: RunGate | None = None) -> JobPipeline:
    gate = gate or RunGate.single(1, asyncio.Event())
    pipeline = JobPipeline(
        settings,
        runner,
        Registry(settings.flows, settings.files_dir),
        ClaimStore(settings.processing, settings.archive, settings.inbox),
        inbox=Inbox(
            settings.inbox, settings.patterns, settle_seconds=0.1, polling=True, on_ready=print
        ),
        gate=gate,
        forced=lambda: False,
    )
    gate.ready.set()
    return pipeline


def _claim(settings: Settings, name: str = "job.yaml") -> tuple[ClaimStore, Claim]:
    (settings.inbox / name).write_text("timeout: 5\nsleep: 0\n")
    processing = ClaimStore(settings.processing, settings.archive, settings.inbox)
    claim = processing.claim(settings.inbox / name)
    assert claim is not None
    return processing, claim


def _results(settings: Settings) -> list[dict[str, Any]]:
    found = [read_result(p) for p in sorted(settings.results.iterdir())]
    return [r for r in found if r is not None]


def test_a_claim_past_the_attempt_cap_gets_an_error_without_running(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_attempts=1)
    processing, _ = _claim(settings)
    (recovered,) = processing.recover()  # the service died while it ran: attempt 2
    assert recovered.attempt == 2
    runner = _Runner()

    async def main() -> None:
        await _pipeline(settings, runner).handle(recovered)

    asyncio.run(main())
    assert runner.requests == []
    (result,) = _results(settings)
    assert result["status"] == "error"
    assert "not tried again" in result["message"]
    assert [p.name for p in settings.archive.iterdir()] == ["job.yaml"]


def test_a_staged_result_found_at_recovery_is_published_without_running(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    processing, claim = _claim(settings)
    staged: Result = {
        "job": "job.yaml",
        "status": "completed",
        "message": "ran before the restart",
        "claim_id": claim.id,
        "attempt": claim.attempt,
    }
    processing.stage(claim, dump(staged))
    (recovered,) = processing.recover()
    runner = _Runner()

    async def main() -> None:
        await _pipeline(settings, runner).handle(recovered)

    asyncio.run(main())
    assert runner.requests == []
    (result,) = _results(settings)
    assert result["message"] == "ran before the restart"
    assert [p.name for p in settings.archive.iterdir()] == ["job.yaml"]
    assert not recovered.folder.exists()


@pytest.mark.parametrize("flow_run", ["nightly-export", None])
def test_a_staged_result_published_at_recovery_says_so_in_its_log_line(
    tmp_path: Path, flow_run: str | None
) -> None:
    settings = _settings(tmp_path)
    processing, claim = _claim(settings, "x.yaml")
    staged: Result = {
        "job": "x.yaml",
        "status": "completed",
        "message": "ran before the restart",
        "claim_id": claim.id,
        "attempt": claim.attempt,
        "duration_s": 4.2,
    }
    if flow_run:
        staged["flow_run_name"] = flow_run
    processing.stage(claim, dump(staged))
    (recovered,) = processing.recover()
    lines = _ServiceLines()
    logger = logging.getLogger("watcher.service.loop")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        asyncio.run(_pipeline(settings, _Runner()).handle(recovered))
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    run = f"; flow run {flow_run}" if flow_run else ""
    assert lines.messages == [
        f"job finished: x.yaml completed (published a result staged before the restart{run}) "
        "-> x.result.yaml"
    ]


def test_a_stop_while_waiting_for_a_slot_leaves_the_job_claimed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _, claim = _claim(settings)
    runner = _Runner()

    async def main() -> None:
        gate = _Gate(1)
        pipeline = _pipeline(settings, runner, gate)
        assert await gate.take_slot()  # another job holds the only slot
        gate.entered.clear()
        task = asyncio.create_task(pipeline.handle(claim))
        await gate.entered.wait()
        gate.stop.set()
        gate.leave()  # the slot frees up after the stop: the job must not start
        await task  # it ends, without an exception

    asyncio.run(main())
    assert runner.requests == []
    assert _results(settings) == []
    assert list(settings.archive.iterdir()) == []
    # Released: still claimed, and the interrupted start does not count as an attempt.
    (left,) = ClaimStore(settings.processing, settings.archive, settings.inbox).recover()
    assert (left.id, left.attempt, left.name) == (claim.id, 1, "job.yaml")


def test_a_job_asks_for_its_slot_with_its_name_and_its_file_mtime(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _, claim = _claim(settings, "late.yaml")
    mtime_ns = 1_700_000_000_123_456_789
    os.utime(claim.path, ns=(mtime_ns, mtime_ns))  # the route's `oldest` order goes by it
    runner = _Runner()

    async def main() -> None:
        gate = _Gate(1)
        await _pipeline(settings, runner, gate).handle(claim)
        assert gate.asked == [("late.yaml", mtime_ns)]

    asyncio.run(main())
    assert len(runner.requests) == 1


def test_a_job_from_a_subfolder_asks_with_its_path_and_its_result_says_where(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    (settings.inbox / "2026/12").mkdir(parents=True)
    _, claim = _claim(settings, "2026/12/page.yaml")  # `order: name` goes by the path
    runner = _Runner()

    async def main() -> None:
        gate = _Gate(1)
        await _pipeline(settings, runner, gate).handle(claim)
        assert [name for name, _ in gate.asked] == ["2026/12/page.yaml"]

    asyncio.run(main())
    result = read_result(settings.results / "2026/12/page.result.yaml")
    assert result is not None
    assert (result["route"], result["subfolder"], result["status"]) == (
        "default",
        "2026/12",
        "completed",
    )
    assert (settings.archive / "2026/12/page.yaml").exists()


def _record_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff's waits, recorded instead of slept (the boundary: time itself)."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def no_wait(delay: float, *args: Any) -> Any:
        waits.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr("watcher.retry.asyncio.sleep", no_wait)
    return waits


def test_a_failing_result_write_is_retried_until_the_result_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    _, claim = _claim(settings)
    runner = _Runner()
    waits = _record_waits(monkeypatch)
    failures = [PermissionError(13, "Permission denied"), OSError(28, "No space left")]

    def stage(self: ClaimStore, claim: Claim, data: bytes) -> None:
        if failures:
            raise failures.pop(0)
        original(self, claim, data)

    original = ClaimStore.stage
    monkeypatch.setattr(ClaimStore, "stage", stage)

    async def main() -> None:
        await _pipeline(settings, runner).handle(claim)

    asyncio.run(main())
    assert len(runner.requests) == 1
    assert waits == [1.0, 2.0]
    (result,) = _results(settings)
    assert result["status"] == "completed"
    assert [p.name for p in settings.archive.iterdir()] == ["job.yaml"]


def test_a_job_file_that_cannot_be_read_is_tried_four_times_then_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    _, claim = _claim(settings)
    runner = _Runner()
    waits = _record_waits(monkeypatch)
    reads: list[Path] = []

    def unreadable(path: Path, limits: Any) -> Any:
        reads.append(path)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("watcher.service.pipeline.load_job", unreadable)
    asyncio.run(_pipeline(settings, runner).handle(claim))
    assert len(reads) == 4
    assert waits == [1.0, 2.0, 4.0]
    assert runner.requests == []
    (result,) = _results(settings)
    assert result["status"] == "error"
    assert result["message"] == "job.yaml: could not be read: Input/output error"


def test_a_result_write_that_keeps_failing_is_logged_once_and_once_when_it_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    _, claim = _claim(settings)
    shutil.rmtree(settings.results)
    settings.results.write_text("a file where the results folder should be")  # every try fails
    monkeypatch.setattr("watcher.service.pipeline.RETRY_FIRST", 0.01)
    monkeypatch.setattr("watcher.service.pipeline.RETRY_MAX", 0.02)
    pipeline = _pipeline(settings, _Runner())
    tries = 0
    write = pipeline._complete_sync

    def counted(*args: Any) -> Any:  # a spy: every try still writes for real
        nonlocal tries
        tries += 1
        return write(*args)

    monkeypatch.setattr(pipeline, "_complete_sync", counted)
    caplog.set_level(logging.INFO)

    async def main() -> None:
        task = asyncio.create_task(pipeline.handle(claim))
        while tries < 5:
            await asyncio.sleep(0.01)
        settings.results.unlink()
        settings.results.mkdir()
        await task

    asyncio.run(main())
    assert [r["status"] for r in _results(settings)] == ["completed"]
    assert caplog.text.count("cannot write its result") == 1
    assert caplog.text.count("job.yaml: its result could be written again") == 1


def test_the_run_request_carries_the_route_its_deployment_and_work_queue(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "runner: deployment\ndefaults: {timeout: 5, sleep: 0}\nroutes:\n"
        "  fast: {inbox: in/fast, deployment: wait/fast, work_queue: urgent}\n"
        "  plain: {inbox: in/plain}\n"
    )
    runner = _Runner()
    for name in ("fast", "plain"):
        settings = load_config(config).for_route(name)
        for folder in (settings.inbox, settings.results, settings.archive, settings.processing):
            folder.mkdir(parents=True, exist_ok=True)
        _, claim = _claim(settings, f"{name}.yaml")
        asyncio.run(_pipeline(settings, runner).handle(claim))
    fast, plain = runner.requests
    assert (fast.route, fast.deployment, fast.work_queue) == ("fast", "wait/fast", "urgent")
    assert (plain.route, plain.deployment, plain.work_queue) == ("plain", None, None)
    assert fast.label == "fast" and plain.label == "plain"
