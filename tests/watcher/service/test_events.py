"""Job events as one job's pipeline makes them: real folders, a runner double, and an events
client double at the boundary `watcher.service.events._connect` (Prefect's events websocket;
tests/test_events.py sends them to a real server)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.watcher.service.test_pipeline import _claim, _pipeline, _Runner, _settings
from watcher.running.contract import RunnerHealth
from watcher.service import events as job_events
from watcher.service.events import JobEvents, event_fields, with_events
from watcher.service.vitals import JobSeen, Vitals


class _Client:
    """Prefect's events client, entered: records what it is sent, or fails while `down`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.down = False
        self.sent: list[Any] = []

    async def emit(self, event: Any) -> None:
        if self.down:
            raise OSError("connection refused")
        self.sent.append(event)
        self.log.append(f"sent {event.event}")

    async def __aexit__(self, *exc: object) -> None:
        self.log.append("client closed")


class _ApiRunner(_Runner):
    """The runner double, with the API address a Prefect runner learns at its start."""

    api_url = "http://127.0.0.1:9/api"

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.health = RunnerHealth()

    async def close(self) -> None:
        self.log.append("runner closed")


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Client]:
    log: list[str] = []
    fake = _Client(log)

    async def connect(url: str) -> _Client:
        assert url == _ApiRunner.api_url
        if fake.down:
            raise OSError("connection refused")
        return fake

    async def answers(url: str) -> bool:
        return not fake.down

    monkeypatch.setattr(job_events, "_connect", connect)
    monkeypatch.setattr(job_events, "_answers", answers)
    monkeypatch.setattr(job_events, "RETRY_FIRST", 0.01)
    yield fake


async def _until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.01)


def test_a_recovered_claim_is_not_received_again_and_the_stop_sends_all_first(
    tmp_path: Path, client: _Client
) -> None:
    settings = _settings(tmp_path)
    (settings.inbox / "fresh.yaml").write_text("timeout: 5\nsleep: 0\n")
    processing, _ = _claim(settings, "again.yaml")
    (recovered,) = processing.recover()  # the service died while it ran

    async def main() -> None:
        vitals = Vitals(["default"])
        runner = with_events(_ApiRunner(client.log), vitals)
        await runner.start()
        pipeline = _pipeline(settings, runner)  # type: ignore[arg-type]
        pipeline.vitals = vitals
        await pipeline.handle(settings.inbox / "fresh.yaml")
        await pipeline.handle(recovered)
        await runner.close()

    asyncio.run(main())
    sent = [(e.resource.name, e.event, e.resource["dropflow.status"]) for e in client.sent]
    assert sent == [
        ("fresh.yaml", "dropflow.job.received", "waiting"),
        ("fresh.yaml", "dropflow.job.started", "running"),
        ("fresh.yaml", "dropflow.job.completed", "completed"),
        ("again.yaml", "dropflow.job.started", "running"),
        ("again.yaml", "dropflow.job.completed", "completed"),
    ]
    assert client.sent[-1].resource.id == f"dropflow.job.{recovered.id}"
    assert client.sent[-1].payload["attempt"] == 2
    assert client.log[-2:] == ["client closed", "runner closed"]


def test_an_api_down_fails_no_job_is_logged_once_and_its_events_follow(
    tmp_path: Path, client: _Client, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    names = ["one.yaml", "two.yaml"]
    for name in names:
        (settings.inbox / name).write_text("timeout: 5\nsleep: 0\n")
    client.down = True

    async def main() -> None:
        vitals = Vitals(["default"])
        runner = with_events(_ApiRunner(client.log), vitals)
        await runner.start()
        pipeline = _pipeline(settings, runner)  # type: ignore[arg-type]
        pipeline.vitals = vitals
        for name in names:
            await pipeline.handle(settings.inbox / name)
        assert len(list(settings.results.iterdir())) == 2  # the jobs did not wait
        assert client.sent == []
        client.down = False
        await _until(lambda: len(client.sent) == 6)
        await runner.close()

    with caplog.at_level(logging.INFO, logger=job_events.__name__):
        asyncio.run(main())
    assert [e.resource.name for e in client.sent] == ["one.yaml"] * 3 + ["two.yaml"] * 3
    lines = [r.getMessage() for r in caplog.records if r.name == job_events.__name__]
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        "dropflow events cannot reach the Prefect API at http://127.0.0.1:9/api "
        "(connection refused); keeping up to 1000"
    )
    assert lines[1] == (
        "dropflow events reach the Prefect API at http://127.0.0.1:9/api again; sending the 6 "
        "kept meanwhile (0 dropped in all)"
    )


def test_the_stop_waits_for_an_api_down_at_most_its_flush_timeout(
    client: _Client, caplog: pytest.LogCaptureFixture
) -> None:
    client.down = True
    events = JobEvents(buffer=2)
    job = JobSeen("default", "c1", "a.yaml", "a.yaml", None)

    async def main() -> float:
        events.start(_ApiRunner.api_url)
        for _ in range(3):
            events.started(job, "wait")
        t0 = time.monotonic()
        await events.aclose(timeout=0.3)
        return time.monotonic() - t0

    with caplog.at_level(logging.INFO, logger=job_events.__name__):
        waited = asyncio.run(main())
    assert 0.3 <= waited < 2
    lines = [r.getMessage() for r in caplog.records if r.name == job_events.__name__]
    assert lines[0] == "1 dropflow event(s) dropped: more than 2 wait for the Prefect API"
    assert lines[-1] == (
        "2 dropflow event(s) not sent: the Prefect API did not take them within 0.3s of the stop"
    )


def test_the_fields_of_a_result_from_a_subfolder_with_a_flow_run() -> None:
    job = JobSeen("scans", "c9", "p\udce9.yaml", "2026/12/p\udce9.yaml", 1_700_000_000.0)
    received = event_fields("received", job)
    assert received["event"] == "dropflow.job.received"
    assert received["resource"] == {
        "prefect.resource.id": "dropflow.job.c9",
        "prefect.resource.name": "p?.yaml",
        "dropflow.route": "scans",
        "dropflow.status": "waiting",
    }
    assert received["payload"] == {
        "claim_id": "c9",
        "subfolder": "2026/12",
        "dropped_at": "2023-11-14T22:13:20+00:00",
    }
    result = {
        "status": "canceled",
        "message": "x" * 5000,
        "flow": "wait",
        "attempt": 1,
        "duration_s": 0.5,
        "flow_run_id": "f1",
        "flow_run_name": "p-run",
    }
    done = event_fields("finished", job, result=result)
    assert done["event"] == "dropflow.job.canceled"
    assert done["resource"]["dropflow.flow"] == "wait"
    assert done["resource"]["dropflow.status"] == "canceled"
    assert len(done["payload"]["message"]) == 2000
    assert done["related"] == [
        {
            "prefect.resource.id": "prefect.flow-run.f1",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": "p-run",
        }
    ]
