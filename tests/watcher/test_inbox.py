"""The inbox on the real filesystem with a real watchdog observer."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from watcher.inbox import Inbox, is_job_name

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("job.yaml", True),
        ("JOB.YML", True),
        ("- dash.yaml", True),
        ("new\nline.yaml", True),
        (".hidden.yaml", False),
        ("job.yaml~", False),
        ("#job.yaml#", False),
        ("~$job.yaml", False),
        ("job.yaml.swp", False),
        ("job.txt", False),
    ],
)
async def test_job_names(name: str, expected: bool) -> None:
    assert is_job_name(name, ("*.yaml", "*.yml")) is expected


Ready = list[tuple[float, Path]]


async def _with_inbox(
    folder: Path,
    settle: float,
    polling: bool,
    body: Callable[[Inbox, Ready], Coroutine[Any, Any, None]],
) -> None:
    ready: Ready = []
    inbox = Inbox(
        folder,
        ("*.yaml",),
        settle_seconds=settle,
        polling=polling,
        on_ready=lambda p: ready.append((time.monotonic(), p)),
    )
    inbox.start()

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.05)
            inbox.check_all()

    ticker = asyncio.create_task(tick())
    try:
        await body(inbox, ready)
    finally:
        ticker.cancel()
        inbox.stop()


async def _until(ready: Ready, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(ready) < count:
        assert time.monotonic() < deadline, ready
        await asyncio.sleep(0.02)


async def test_backlog_is_handed_out_at_start(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text("timeout: 1\n")
    old = time.time() - 60
    os.utime(tmp_path / "old.yaml", (old, old))

    async def body(inbox: Inbox, ready: Ready) -> None:
        await _until(ready, 1, timeout=1)
        assert ready[0][1] == tmp_path / "old.yaml"

    await _with_inbox(tmp_path, 5.0, False, body)


async def test_a_writer_that_pauses_is_waited_for(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        with open(tmp_path / "slow.yaml", "w") as handle:
            handle.write("timeout: 1\n")
            handle.flush()
            await asyncio.sleep(1.0)  # well past the settle time
            assert ready == []
            handle.write("sleep: 0\n")
            closed = time.monotonic()
        await _until(ready, 1)
        assert ready[0][0] - closed < 0.5  # close-after-write: no settle wait

    await _with_inbox(tmp_path, 0.3, False, body)


async def test_a_file_renamed_inside_the_inbox_is_ready_at_once(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        (tmp_path / ".job.yaml.part").write_text("timeout: 1\n")
        os.rename(tmp_path / ".job.yaml.part", tmp_path / "job.yaml")
        moved = time.monotonic()
        await _until(ready, 1)
        assert ready[0][1] == tmp_path / "job.yaml"
        assert ready[0][0] - moved < 1.0

    await _with_inbox(tmp_path, 3.0, False, body)


async def test_a_file_moved_in_from_another_folder_is_ready_at_once(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    outside.mkdir()

    async def body(_: Inbox, ready: Ready) -> None:
        (outside / "job.yaml").write_text("timeout: 1\n")
        os.rename(outside / "job.yaml", inbox / "job.yaml")
        moved = time.monotonic()
        await _until(ready, 1)
        assert ready[0][0] - moved < 1.0  # not the 3 s settle time

    await _with_inbox(inbox, 3.0, False, body)


async def test_a_created_file_that_is_opened_waits_for_its_close(tmp_path: Path) -> None:
    async def body(_: Inbox, ready: Ready) -> None:
        fd = os.open(tmp_path / "empty.yaml", os.O_WRONLY | os.O_CREAT)
        try:
            await asyncio.sleep(0.6)  # created, opened, nothing written yet
            assert ready == []
            os.write(fd, b"timeout: 1\n")
        finally:
            os.close(fd)
        await _until(ready, 1)

    await _with_inbox(tmp_path, 5.0, False, body)


async def test_polling_waits_for_the_settle_time(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        await asyncio.sleep(0.6)
        written = time.monotonic()
        (tmp_path / "p.yaml").write_text("timeout: 1\n")
        await _until(ready, 1)
        assert ready[0][0] - written >= 1.0

    await _with_inbox(tmp_path, 1.0, True, body)


async def test_each_file_is_handed_out_once(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        path = tmp_path / "many.yaml"
        for i in range(20):
            with open(path, "a") as handle:
                handle.write(f"# {i}\n")
        await _until(ready, 1)
        inbox.scan()
        await asyncio.sleep(0.5)
        assert [p for _, p in ready] == [path]

    await _with_inbox(tmp_path, 0.2, False, body)


async def test_a_lost_event_is_found_by_a_scan(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        inbox.stop()  # the observer is gone: its events are lost
        path = tmp_path / "unseen.yaml"
        path.write_text("timeout: 1\n")
        await asyncio.sleep(0.3)
        assert ready == []
        assert inbox.scan() == 1
        await _until(ready, 1)

    await _with_inbox(tmp_path, 0.1, False, body)


async def test_a_deleted_inbox_is_reported_unhealthy_and_recreated(tmp_path: Path) -> None:
    folder = tmp_path / "in"

    async def body(inbox: Inbox, ready: Ready) -> None:
        assert inbox.healthy()
        os.rmdir(folder)
        assert not inbox.healthy()
        inbox.restart()
        assert folder.is_dir() and inbox.healthy()
        (folder / "after.yaml").write_text("timeout: 1\n")
        await _until(ready, 1)

    await _with_inbox(folder, 0.1, False, body)


async def test_an_inotify_overflow_asks_for_a_rescan(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        assert not inbox.rescan_needed.is_set()
        # watchdog reports a kernel queue overflow only as this log record.
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        await asyncio.wait_for(inbox.rescan_needed.wait(), 2)

    await _with_inbox(tmp_path, 0.1, False, body)
