"""The service's retention runs: at start, then periodically, logged per route."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ServiceFactory
from tests.harness import (
    ServiceProcess,
    archived_files,
    archived_names,
    claim_folders,
    wait_until,
)
from watcher import defaults
from watcher.config.settings import load_config
from watcher.folders.pruned import read_cutoff
from watcher.folders.retention import WAITER_PREFIX
from watcher.service.retention import keep_pruning


def _old_result(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("status: completed\n")
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    return path


async def _until_gone(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} still there after {timeout} s"
        await asyncio.sleep(0.05)


def test_retention_runs_at_start_then_every_period_and_logs_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(defaults.RETENTION_FLOOR_ENV, "1")
    config = tmp_path / "config.yaml"
    config.write_text(f"results_days: {1.5 / 86400!r}\n")  # 1.5 s: a run every 1.5 s
    settings = load_config(config)
    results, processing = tmp_path / "results", tmp_path / "processing"
    results.mkdir()
    processing.mkdir()
    first = _old_result(results, "first.result.yaml")
    young = results / "young.result.yaml"
    young.write_text("status: completed\n")
    caplog.set_level(logging.INFO, logger="watcher.service.retention")

    async def main() -> None:
        halt = threading.Event()
        task = asyncio.create_task(keep_pruning(settings, halt))
        await _until_gone(first, 5)
        assert young.exists()  # written just now: kept
        young.unlink()  # older than 1.5 s by the next run
        second = _old_result(results, "second.result.yaml")
        await _until_gone(second, 5)  # the periodic run
        halt.set()
        await asyncio.wait_for(task, 5)  # a set `halt` ends it after the current sleep

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retention:")]
    assert (
        lines[:2]
        == [
            "retention: removed 1 result(s) (results_days: 1.73611e-05), archived file(s) kept for "
            "ever, 0 empty date folder(s)"
        ]
        * 2
    )


def test_the_first_run_waits_for_the_runner(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("results_days: 1\n")
    settings = load_config(config)
    (tmp_path / "results").mkdir()
    (tmp_path / "processing").mkdir()
    old = tmp_path / "results" / "old.result.yaml"
    old.write_text("status: completed\n")
    os.utime(old, (time.time() - 2 * DAY, time.time() - 2 * DAY))

    async def main() -> None:
        runner_up = asyncio.Event()
        task = asyncio.create_task(keep_pruning(settings, threading.Event(), runner_up))
        done, _ = await asyncio.wait([task], timeout=0.5)  # no event to wait for: a run
        assert not done and old.exists()
        runner_up.set()
        await _until_gone(old, 5)
        task.cancel()

    asyncio.run(main())


def test_nothing_runs_when_everything_is_kept_for_ever(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("results_days: 0\n")
    task_done = asyncio.run(
        asyncio.wait_for(keep_pruning(load_config(config), threading.Event()), 1)
    )
    assert task_done is None


DAY = 86400.0


def _age(path: Path, days: float) -> Path:
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def _old_file(path: Path, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return _age(path, days)


def _run_jobs(svc: ServiceProcess, names: list[str], *, mtime: float | None = None) -> None:
    """Drop jobs (with `mtime`, as `cp -p` keeps an old one) and wait until each is archived."""
    staging = svc.root / "staging"
    staging.mkdir(exist_ok=True)
    for name in names:
        (staging / name).write_text("timeout: 5\nsleep: 0\n")
        if mtime is not None:
            os.utime(staging / name, (mtime, mtime))
        os.rename(staging / name, svc.inbox / name)
    for name in names:
        assert svc.wait_result(name)["status"] == "completed"
    wait_until(
        lambda: (
            set(names) <= set(archived_names(svc.archive)) and not claim_folders(svc.processing)
        ),
        30,
    )


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_restart_removes_exactly_the_old_results_and_archived_files(
    service: ServiceFactory,
) -> None:
    svc = service({"runner": "direct", "results_days": 1, "archive_days": 2})
    svc.wait_for_log("retention: removed 0 result(s) (results_days: 1), removed 0 archived")
    _run_jobs(svc, ["old.yaml", "young.yaml"])
    # Copied with `cp -p` from a 2001 original, archived just now: not old.
    _run_jobs(svc, ["copied.yaml"], mtime=1_000_000_000)
    assert svc.stop() == 0
    # The default layout: each job under the UTC day of its claim.
    day = {p.name: p.parent for p in archived_files(svc.archive)}
    _age(svc.results / "old.result.yaml", 1.5)
    _age(svc.results / "copied.result.yaml", 0.5)
    _age(day["old.yaml"] / "old.yaml", 2.5)
    _age(day["young.yaml"] / "young.yaml", 1.5)
    _old_file(svc.results / "notes.txt", 10)  # not a result
    # A temp file being written into the archive (results' are the start's to clean).
    _old_file(svc.archive / ".dropflow-tmp-writing", 10)
    _old_file(svc.archive / "2020" / "01" / "01" / "older.yaml", 2000)

    before = time.time()
    svc = service({"runner": "direct", "results_days": 1, "archive_days": 2})
    svc.wait_for_log("retention: removed 1 result(s) (results_days: 1), removed 2 archived")

    assert _tree(svc.results) == [
        "copied.result.yaml",
        "notes.txt",
        "young.result.yaml",
    ]
    # 2020/01/01 and up: gone with their last file.
    assert archived_names(svc.archive) == ["copied.yaml", "young.yaml"]
    assert (svc.archive / ".dropflow-tmp-writing").exists()
    assert not (svc.archive / "2020").exists()
    assert "1 empty date folder(s)" not in svc.log()
    assert "3 empty date folder(s)" in svc.log()
    cutoff = read_cutoff(svc.processing)
    assert cutoff is not None and before - DAY - 1 < cutoff < time.time() - DAY + 1


def test_a_waiting_submit_never_loses_its_result_to_retention(
    service: ServiceFactory, tmp_path: Path
) -> None:
    # A waiter stopped (a laptop asleep, a stalled NFS client) while its result ages past
    # results_days: the service keeps that result while the waiter's marker is fresh.
    floor = {defaults.RETENTION_FLOOR_ENV: "1"}
    svc = service({"runner": "direct", "results_days": 2 / 86400}, extra_env=floor)
    job = tmp_path / "jobs" / "guarded.yaml"
    job.parent.mkdir()
    job.write_text("timeout: 10\nsleep: 1.5\n")
    waiter = subprocess.Popen(
        [sys.executable, "-m", "watcher", "submit", "--wait", "-c", "config.yaml", str(job)],
        cwd=tmp_path,
        env={**os.environ, **floor},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiter.stdout is not None
        first = waiter.stdout.readline()
        assert "guarded.yaml: submitted as" in first, first + waiter.stderr.read()
        waiter.send_signal(signal.SIGSTOP)  # its job runs 1.5 s: it has not seen its result
        assert [p.name for p in svc.processing.glob(f"{WAITER_PREFIX}*")]
        result = svc.result_path("guarded.yaml")
        wait_until(result.exists, 30)
        # Retention goes on meanwhile: a result nobody waits for goes...
        svc.drop("plain.yaml", "timeout: 5\nsleep: 0\n")
        wait_until(svc.result_path("plain.yaml").exists, 30)
        wait_until(lambda: not svc.result_path("plain.yaml").exists(), 30)
        # ...the awaited one, older than results_days by now, stays.
        svc.wait_for_log("1 result(s) kept for a waiting submit", 30)
        assert result.exists() and time.time() - result.stat().st_mtime > 2
        waiter.send_signal(signal.SIGCONT)
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.send_signal(signal.SIGCONT)
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0, out + err
    assert "guarded.yaml: completed" in out
    assert not list(svc.processing.glob(f"{WAITER_PREFIX}*"))  # its marker went with it
    wait_until(lambda: not result.exists(), 30)  # and so does the guard
