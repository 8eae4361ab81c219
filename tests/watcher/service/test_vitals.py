"""The service's vitals as one job's pipeline writes them: real folders, a runner double."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.watcher.service.test_pipeline import _claim, _Gate, _pipeline, _Runner, _settings
from watcher.config.settings import load_config
from watcher.folders.lock import DataDirLock, Owner
from watcher.running.direct import DirectRunner
from watcher.service.loop import Service
from watcher.service.vitals import JobSeen, Vitals


class _Observer:
    """Implements `watcher.service.vitals.JobObserver`: records each step, and the vitals
    as they were at that step."""

    def __init__(self, vitals: Vitals) -> None:
        self.vitals = vitals
        self.steps: list[tuple[str, str, int, int]] = []

    def _record(self, step: str, job: JobSeen) -> None:
        route = self.vitals.snapshot().routes[job.route]
        self.steps.append((step, job.file, route.waiting, route.in_flight))

    def received(self, job: JobSeen) -> None:
        self._record("received", job)

    def started(self, job: JobSeen, flow: str) -> None:
        self._record(f"started {flow}", job)

    def finished(self, job: JobSeen, result: Mapping[str, Any]) -> None:
        self._record(f"finished {result['status']}", job)


def test_a_job_is_received_started_and_finished_with_its_counts(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _, claim = _claim(settings)
    dropped = 1_700_000_000
    os.utime(claim.path, (dropped, dropped))
    vitals = Vitals(["default"])
    observer = _Observer(vitals)
    vitals.observers.append(observer)
    seen: list[JobSeen] = []
    vitals.observers.append(_Seen(seen))

    async def main() -> None:
        pipeline = _pipeline(settings, _Runner())
        pipeline.vitals = vitals
        await pipeline.handle(claim)

    asyncio.run(main())
    assert observer.steps == [
        ("received", "job.yaml", 1, 0),
        ("started wait", "job.yaml", 0, 1),
        ("finished completed", "job.yaml", 0, 0),
    ]
    assert seen[0].claim_id == claim.id and seen[0].dropped_at == dropped
    assert seen[0].recovered  # handed a claim, as at recovery
    assert vitals.snapshot().routes["default"].done == {"completed": 1}


def test_a_job_left_claimed_at_a_stop_is_no_longer_waiting(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _, claim = _claim(settings)
    os.utime(claim.path, (1_700_000_000, 1_700_000_000))
    vitals = Vitals(["default"])

    async def main() -> None:
        gate = _Gate(1)
        pipeline = _pipeline(settings, _Runner(), gate)
        pipeline.vitals = vitals
        assert await gate.take_slot()  # another job holds the only slot
        gate.entered.clear()
        task = asyncio.create_task(pipeline.handle(claim))
        await gate.entered.wait()
        waiting = vitals.snapshot().routes["default"]
        assert waiting.waiting == 1
        assert waiting.oldest_waiting_s is not None and waiting.oldest_waiting_s > 9e7  # since 2023
        gate.stop.set()
        gate.leave()
        await task

    asyncio.run(main())
    left = vitals.snapshot().routes["default"]
    assert (left.waiting, left.in_flight, left.oldest_waiting_s, left.done) == (0, 0, None, {})


def test_the_snapshot_adds_the_files_still_settling_and_tells_the_phase() -> None:
    vitals = Vitals(["a"])
    vitals.watch_route("a", lambda: 3)
    phases: list[str] = []
    vitals.phase_listeners.append(phases.append)
    vitals.set_phase("standby")
    vitals.set_phase("standby")
    assert not vitals.snapshot().owner
    vitals.set_phase("serving")
    snap = vitals.snapshot()
    assert snap.owner and snap.routes["a"].waiting == 3 and snap.beat_age_s is None
    assert phases == ["standby", "serving"]
    beats: list[int] = []
    vitals.beat_listeners.append(lambda: beats.append(1))
    vitals.beat()
    age = vitals.snapshot().beat_age_s
    assert beats == [1] and age is not None and age >= 0


class _Seen:
    def __init__(self, seen: list[JobSeen]) -> None:
        self.seen = seen

    def received(self, job: JobSeen) -> None:
        self.seen.append(job)

    def started(self, job: JobSeen, flow: str) -> None:
        pass

    def finished(self, job: JobSeen, result: Mapping[str, Any]) -> None:
        pass


def test_the_loop_beats_while_it_waits_for_a_dead_owners_data_dir(tmp_path: Path) -> None:
    """Between taking the folders and its tick (waiting for the data_dir's lock, recovering),
    the loop still beats: a watchdog must not see a live service as wedged."""
    config = tmp_path / "config.yaml"
    config.write_text("data_dir: data\ndefaults: {timeout: 5, sleep: 0}\n")
    settings = load_config(config)
    # A dead service's embedded server still holds the data_dir: the new owner waits for it.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    holder = DataDirLock(settings.data_dir)
    holder.acquire(
        replace(Owner.me("2026-01-01T00:00:00Z"), pid=int(dead.stdout)), threading.Event()
    )
    service = Service(settings, DirectRunner(), data_lock=DataDirLock(settings.data_dir))
    beats = threading.Semaphore(0)
    service.vitals.beat_listeners.append(beats.release)
    thread = threading.Thread(target=service.run)
    thread.start()
    try:
        for _ in range(5):  # half a second of beats, all while the lock is held
            assert beats.acquire(timeout=5)
        assert not service.started.is_set()
        assert service.vitals.phase == "starting"
        holder.release()
        assert service.started.wait(30)
    finally:
        holder.release()
        service.request_stop()
        thread.join(30)
    assert service.vitals.phase == "stopped"
