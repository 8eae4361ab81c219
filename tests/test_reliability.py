"""Nothing lost, nothing run twice: crashes, stops and faults, with real processes."""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceFactory
from tests.harness import (
    PrefectServer,
    ServiceProcess,
    archived_files,
    audit,
    claim_folders,
    wait_until,
)
from watcher.config.settings import load_config
from watcher.running.direct import DirectRunner
from watcher.service.loop import Service


def check_every_job_has_one_complete_result(
    root: Path, names: list[str]
) -> dict[str, dict[str, Any]]:
    """The invariant: one parseable result per job, every job file archived, nothing left over."""
    found = audit(root, names)
    problems = {k: v for k, v in found.items() if k != "results" and v}
    assert not problems, problems
    results: dict[str, dict[str, Any]] = found["results"]
    return results


def test_kill_9_at_random_moments_loses_nothing(service: ServiceFactory, tmp_path: Path) -> None:
    rng = random.Random(1234)
    config = {
        "max_attempts": 10,
        "rescan_interval": 1,
        "defaults": {"timeout": 2, "sleep": [0, 0.4]},
    }
    names = [f"job{i:02d}.yaml" for i in range(30)]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in names[:10]:
        (inbox / name).write_text("{}\n")
    dropped = 10
    # One kill that surely lands mid-run: right after the job's start is logged, well inside
    # its 2 s of work. The random kills below may or may not catch a job running.
    svc = service(config)
    svc.drop("inflight.yaml", "timeout: 10\nsleep: 2\n")
    svc.wait_for_log("job started: inflight.yaml")
    svc.kill()
    for _ in range(4):
        svc = service(config)
        deadline = time.monotonic() + rng.uniform(0.3, 2.5)
        while time.monotonic() < deadline:
            if dropped < len(names):
                svc.drop(names[dropped], "{}\n")
                dropped += 1
            time.sleep(0.05)
        svc.kill()
    for name in names[dropped:]:
        (inbox / name).write_text("{}\n")
    everything = [*names, "inflight.yaml"]
    svc = service(config)
    wait_until(lambda: len(archived_files(svc.archive)) == len(everything), 60)
    assert svc.stop() == 0
    results = check_every_job_has_one_complete_result(tmp_path, everything)
    assert all(r["status"] in ("completed", "canceled") for r in results.values()), results
    # The job killed mid-run ran again, and its result counts both starts (or more, if a
    # random kill caught it again).
    assert results["inflight.yaml"]["status"] == "completed"
    assert int(str(results["inflight.yaml"]["attempt"])) >= 2, results["inflight.yaml"]


def test_a_second_signal_stops_at_once_and_the_jobs_run_next_time(
    service: ServiceFactory, tmp_path: Path
) -> None:
    svc = service({"shutdown_grace": 30})
    svc.drop("long.yaml", "timeout: 60\nsleep: 30\n")
    svc.wait_for_log("job started: long.yaml")
    svc.send(signal.SIGINT)
    svc.wait_for_log("waiting up to 30s")
    t0 = time.monotonic()
    assert svc.stop(signal.SIGINT, timeout=20) == 130
    assert time.monotonic() - t0 < 10
    assert not svc.result_path("long.yaml").exists()
    (claim,) = claim_folders(svc.processing)
    assert (claim / "long.yaml").exists()

    again = service({"shutdown_grace": 30})
    (claim,) = claim_folders(again.processing)
    assert claim.name.endswith(".2")  # the forced stop counted as a start
    assert again.stop(signal.SIGTERM) == 0


def test_a_job_that_keeps_crashing_the_service_gets_an_error(
    service: ServiceFactory, tmp_path: Path
) -> None:
    config = {"max_attempts": 2}
    svc = service(config)
    svc.drop("doomed.yaml", "timeout: 60\nsleep: 30\n")
    svc.wait_for_log("job started: doomed.yaml")
    svc.kill()
    svc = service(config)
    svc.wait_for_log("attempt 2")
    svc.kill()
    svc = service(config)
    result = svc.wait_result("doomed.yaml")
    assert result["status"] == "error" and result["attempt"] == 3
    assert "stopped while this job was running 2 times" in str(result["message"])


def test_the_inbox_is_recreated_if_deleted(service: ServiceFactory) -> None:
    svc = service()
    shutil.rmtree(svc.inbox)
    svc.wait_for_log("restarting", timeout=10)
    wait_until(svc.inbox.is_dir, 10)
    svc.drop("after.yaml", "timeout: 5\nsleep: 0\n")
    assert svc.wait_result("after.yaml")["status"] == "completed"


def test_an_unwritable_results_folder_keeps_the_job_claimed_and_retries(
    service: ServiceFactory,
) -> None:
    svc = service()
    # Root ignores permissions: a file where the folder should be makes every write fail.
    shutil.rmtree(svc.results)
    svc.results.write_text("not a folder")
    svc.drop("blocked.yaml", "timeout: 5\nsleep: 0\n")
    svc.wait_for_log("cannot write its result")
    assert len(list(claim_folders(svc.processing))) == 1
    svc.results.unlink()
    svc.results.mkdir()
    assert svc.wait_result("blocked.yaml", timeout=60)["status"] == "completed"
    wait_until(lambda: list(claim_folders(svc.processing)) == [], 10)


@pytest.fixture
def tiny_disk(tmp_path: Path, tmpfs: Callable[..., Path]) -> Path:
    """A 16 KiB file system for the results: the shared `tmpfs` fixture, which fails under CI
    instead of skipping, so this test cannot silently never run there."""
    return tmpfs(tmp_path / "results", size="16k")


def test_a_full_disk_keeps_the_job_claimed_and_retries(
    service: ServiceFactory, tiny_disk: Path
) -> None:
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 1024)
    except OSError:
        pass  # the disk is full
    finally:
        os.close(fd)
    svc = service()
    svc.drop("full.yaml", "timeout: 5\nsleep: 0\n")
    svc.wait_for_log("cannot write its result")
    filler.unlink()
    assert svc.wait_result("full.yaml", timeout=60)["status"] == "completed"


@pytest.mark.timeout(300)
def test_prefect_server_stopped_mid_batch_loses_and_errors_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "server-home"
    database = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    server = PrefectServer(home, database_url=database).start()
    svc = ServiceProcess(tmp_path, {}, api_url=server.url, prefect_home=tmp_path / "svc-home")
    try:
        svc.start()
        names = [f"b{i}.yaml" for i in range(10)]
        # A timeout far beyond the outage (5 s, plus the server's restart, which took over 10 s
        # on a loaded CI machine): a job's deadline passing while the API is away is a
        # cancellation, not what this scenario is about.
        for name in names[:5]:
            svc.drop(name, "timeout: 60\nsleep: 1\n")
        # The server goes while these five are under way.
        wait_until(lambda: svc.log().count("job started: b") == 5, 60)
        server.stop()
        for name in names[5:]:
            svc.drop(name, "timeout: 60\nsleep: 1\n")
        # The scenario, not a synchronisation: the server stays down for 5 s. Jobs wait in the
        # Prefect client's retries, which log nothing, and the service need not take the new
        # files in meanwhile: there is no event to wait for.
        time.sleep(5)
        assert len(archived_files(svc.archive)) < len(names)
        restarted = PrefectServer(home, database_url=database)
        restarted.port, restarted.url = server.port, server.url
        server = restarted.start()
        wait_until(lambda: len(archived_files(svc.archive)) == len(names), 180)
        results = check_every_job_has_one_complete_result(tmp_path, names)
        assert {r["status"] for r in results.values()} == {"completed"}, results
        assert svc.stop() == 0
    finally:
        svc.kill()
        server.stop()


class _LossyService(Service):
    """The real service, with the watchdog observer's event delivery losing 9 events in 10."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rng = random.Random(7)
        self.delivered = self.dropped = 0

    async def serve(self) -> None:
        import watcher.service.inbox

        original = watcher.service.inbox.Inbox._post

        def lossy(inbox: watcher.service.inbox.Inbox, event: object) -> None:
            if self.rng.random() < 0.9:
                self.dropped += 1
                return
            self.delivered += 1
            original(inbox, event)  # type: ignore[arg-type]

        watcher.service.inbox.Inbox._post = lossy  # type: ignore[method-assign,assignment]
        try:
            await super().serve()
        finally:
            watcher.service.inbox.Inbox._post = original  # type: ignore[method-assign]


@pytest.mark.timeout(300)
def test_a_burst_of_2000_files_with_lost_events_is_all_processed(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "rescan_interval: 1\nsettle_seconds: 0.2\nmax_concurrent_jobs: 64\n"
        "defaults: {timeout: 1, sleep: 0}\n"
    )
    service = _LossyService(load_config(config), DirectRunner())
    thread = threading.Thread(target=service.run)
    thread.start()
    try:
        assert service.started.wait(30)
        names = [f"burst{i:04d}.yaml" for i in range(2000)]
        staging = tmp_path / "staging"
        staging.mkdir()
        for name in names:
            (staging / name).write_text("{}\n")
            os.rename(staging / name, tmp_path / "inbox" / name)
        wait_until(lambda: len(archived_files(tmp_path / "archive")) == len(names), 240, 0.5)
    finally:
        service.request_stop()
        thread.join(60)
    assert not thread.is_alive()
    assert service.dropped > 1000
    results = check_every_job_has_one_complete_result(tmp_path, names)
    assert {r["status"] for r in results.values()} == {"completed"}
