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
from watchdog.events import DirCreatedEvent, FileCreatedEvent

from watcher.jobs.names import is_job_name
from watcher.service.inbox import Inbox

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
    **options: Any,
) -> None:
    ready: Ready = []
    inbox = Inbox(
        folder,
        ("*.yaml",),
        settle_seconds=settle,
        polling=polling,
        on_ready=lambda p: ready.append((time.monotonic(), p)),
        **options,
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


async def _fence(folder: Path, ready: Ready) -> None:
    """Rename a marker file in and wait until it is handed out (a move is complete at once).
    Events arrive in order, so every event of what was done before has been handled then."""
    marker = folder / f"zz-fence-{len(ready)}-{time.monotonic_ns()}.yaml"
    staged = folder / f".{marker.name}"
    staged.write_text("timeout: 1\n")
    os.rename(staged, marker)
    deadline = time.monotonic() + 10
    while marker not in (p for _, p in ready):
        assert time.monotonic() < deadline, ready
        await asyncio.sleep(0.02)


def _recording(ready: Ready, path: Path, contents: list[bytes]) -> Callable[[Path], None]:
    """An `on_ready` that also keeps what `path` held at the moment it was handed out."""

    def on_ready(p: Path) -> None:
        ready.append((time.monotonic(), p))
        if p == path:
            contents.append(p.read_bytes())

    return on_ready


def _jobs(ready: Ready) -> list[Path]:
    return [p for _, p in ready if not p.name.startswith("zz-fence-")]


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
            await _fence(tmp_path, ready)  # the write was seen
            await asyncio.sleep(1.0)  # the scenario: a pause well past the settle time
            inbox.check_all()
            assert _jobs(ready) == []
            handle.write("sleep: 0\n")
        closed = time.monotonic()
        await _until(ready, 2)
        assert _jobs(ready) == [tmp_path / "slow.yaml"]
        # Taken after the quiet period that follows the close, not before.
        assert ready[-1][0] - closed >= inbox.quiet_seconds

    await _with_inbox(tmp_path, 0.3, False, body)


# The writer: three open/close cycles with pauses shorter than the quiet period.
APPENDS = [b"timeout: 5\n", b"sleep: 0.1\n", b"name: appended\n"]
PAUSE = 0.3


async def _append_in_cycles(path: Path, folder: Path, ready: Ready, inbox: Inbox) -> float:
    """Write `APPENDS`, each in its own open/close, pausing `PAUSE` s between them. After each
    close but the last, check (once its events were handled) that nothing was taken."""
    for i, chunk in enumerate(APPENDS):
        with open(path, "ab" if i else "wb") as handle:
            handle.write(chunk)
        if i < len(APPENDS) - 1:
            await _fence(folder, ready)
            inbox.check_all()
            assert _jobs(ready) == [], f"taken after close {i + 1} of {len(APPENDS)}"
            await asyncio.sleep(PAUSE)  # the scenario: the writer pauses between cycles
    return time.monotonic()


async def _taken_once_whole(
    tmp_path: Path, settle: float, wait: Callable[[Inbox], float], **options: Any
) -> None:
    """Run the appending writer against an inbox: one job, the whole file, taken no sooner
    than `wait(inbox)` after the writer's last close."""
    contents: list[bytes] = []

    async def body(inbox: Inbox, ready: Ready) -> None:
        assert wait(inbox) > 2 * PAUSE
        path = tmp_path / "multi.yaml"
        inbox.on_ready = _recording(ready, path, contents)
        last_close = await _append_in_cycles(path, tmp_path, ready, inbox)
        await _until(ready, len(APPENDS))
        await _fence(tmp_path, ready)
        assert _jobs(ready) == [path]
        assert contents == [b"".join(APPENDS)]
        taken_at = next(t for t, p in ready if p == path)
        assert taken_at - last_close >= wait(inbox)

    await _with_inbox(tmp_path, settle, False, body, **options)


async def test_a_writer_that_closes_and_reopens_is_taken_after_its_last_close(
    tmp_path: Path,
) -> None:
    # A settle time far longer than the test: only the close events can make it complete.
    await _taken_once_whole(tmp_path, 60.0, lambda inbox: inbox.quiet_seconds)


async def test_without_close_events_a_reopened_file_waits_for_the_settle_time(
    tmp_path: Path,
) -> None:
    """`close_events=False` (as on macOS, Windows or polling): closes must not count, and each
    append restarts the settle time."""
    # A quiet period far shorter than the pauses: were closes counted, the first would do.
    await _taken_once_whole(
        tmp_path, 1.0, lambda inbox: inbox.settle_seconds, close_events=False, quiet_seconds=0.05
    )


# Settle and quiet times far longer than the tests: a file taken at all was taken on arrival.
NEVER = {"settle": 60.0, "quiet_seconds": 60.0}


@pytest.mark.parametrize("close_events", [None, False])
async def test_a_file_renamed_inside_the_inbox_is_ready_at_once(
    tmp_path: Path, close_events: bool | None
) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        (tmp_path / ".job.yaml.part").write_text("timeout: 1\n")
        os.rename(tmp_path / ".job.yaml.part", tmp_path / "job.yaml")
        await _until(ready, 1)
        assert ready[0][1] == tmp_path / "job.yaml"

    await _with_inbox(
        tmp_path,
        NEVER["settle"],
        False,
        body,
        close_events=close_events,
        quiet_seconds=NEVER["quiet_seconds"],
    )


async def test_a_file_moved_in_from_another_folder_is_ready_at_once(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    outside.mkdir()

    async def body(_: Inbox, ready: Ready) -> None:
        (outside / "job.yaml").write_text("timeout: 1\n")
        os.rename(outside / "job.yaml", inbox / "job.yaml")
        await _until(ready, 1)

    await _with_inbox(inbox, NEVER["settle"], False, body, quiet_seconds=NEVER["quiet_seconds"])


async def test_a_created_file_that_is_opened_waits_for_its_close(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        fd = os.open(tmp_path / "empty.yaml", os.O_WRONLY | os.O_CREAT)
        try:
            await _fence(tmp_path, ready)  # created, opened, nothing written yet: all seen
            await asyncio.sleep(0.2)  # the scenario: longer than a moved-in file's grace
            inbox.check_all()
            assert _jobs(ready) == []
            os.write(fd, b"timeout: 1\n")
        finally:
            os.close(fd)
        closed = time.monotonic()
        await _until(ready, 2)
        assert _jobs(ready) == [tmp_path / "empty.yaml"]
        # Written in place after all: its close starts the quiet period; it did not arrive.
        assert ready[-1][0] - closed >= inbox.quiet_seconds

    await _with_inbox(tmp_path, 60.0, False, body, quiet_seconds=0.5)


async def test_polling_waits_for_the_settle_time(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        # The polling observer takes its first snapshot on its own thread: a file written
        # before that is in the snapshot and has no event. The fence's rename is seen only
        # once the snapshot exists.
        await _fence(tmp_path, ready)
        written = time.monotonic()
        (tmp_path / "p.yaml").write_text("timeout: 1\n")
        await _until(ready, 2)
        assert _jobs(ready) == [tmp_path / "p.yaml"]
        assert ready[-1][0] - written >= 1.0

    await _with_inbox(tmp_path, 1.0, True, body)


async def test_each_file_is_handed_out_once(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        path = tmp_path / "many.yaml"
        for i in range(20):
            with open(path, "a") as handle:
                handle.write(f"# {i}\n")
        await _until(ready, 1)
        assert inbox.scan() == 0  # handed out: a scan does not count it again
        await _fence(tmp_path, ready)  # and no late event for it hands it out again
        assert _jobs(ready) == [path]

    await _with_inbox(tmp_path, 0.2, False, body)


async def test_a_lost_event_is_found_by_a_scan(tmp_path: Path) -> None:
    async def body(inbox: Inbox, ready: Ready) -> None:
        inbox.stop()  # the observer is gone: its events are lost
        path = tmp_path / "unseen.yaml"
        path.write_text("timeout: 1\n")
        inbox.check_all()
        assert ready == [] and inbox.pending == 0  # nothing knows of it
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


async def test_an_inbox_reached_through_a_symlink_gets_its_events(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "inbox"
    link.symlink_to(real)

    async def body(inbox: Inbox, ready: Ready) -> None:
        # No scan after the start, and a settle time no check reaches: only the move-in
        # event can hand this file out.
        staged = tmp_path / "job.yaml"
        staged.write_text("timeout: 1\n")
        os.rename(staged, link / "job.yaml")
        await _until(ready, 1, timeout=5)
        assert _jobs(ready) == [link / "job.yaml"]

    await _with_inbox(link, 600.0, False, body)


# -- recursive inboxes -----------------------------------------------------------------------

LONG_AGO = time.time() - 600


def _drop(path: Path, *, old: bool = True) -> Path:
    """Write a job file in place (its folders too); `old` backdates it, so a scan or a first
    look takes it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timeout: 1\n")
    if old:
        os.utime(path, (LONG_AGO, LONG_AGO))
    return path


class _Taken:
    """What `on_ready` handed out, in order; tests await it instead of polling a list."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Path] = asyncio.Queue()
        self.seen: list[Path] = []

    def __call__(self, path: Path) -> None:
        self.seen.append(path)
        self.queue.put_nowait(path)

    def drain(self) -> list[Path]:
        """What was handed out and not yet awaited (e.g. by the scan in `start`)."""
        got: list[Path] = []
        while not self.queue.empty():
            got.append(self.queue.get_nowait())
        return got

    async def next(self, timeout: float = 10) -> Path:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def until(self, path: Path, timeout: float = 10) -> list[Path]:
        """Wait for `path` to be handed out; return what else was handed out meanwhile."""
        others: list[Path] = []
        while (got := await self.next(timeout)) != path:
            others.append(got)
        return others

    async def fence(self, folder: Path) -> list[Path]:
        """Rename a marker into `folder` and wait for it: events come in order, so what was
        done before has been handled. Returns what else was handed out meanwhile."""
        marker = folder / f"zz-fence-{time.monotonic_ns()}.yaml"
        # Backdated: where the rename is seen as a creation (polling), it is taken at once too.
        staged = _drop(folder / f".{marker.name}")
        os.rename(staged, marker)
        return await self.until(marker)


async def _with_tree(
    folder: Path,
    body: Callable[[Inbox, _Taken], Coroutine[Any, Any, None]],
    *,
    polling: bool = False,
    settle: float = 0.1,
    before_start: Callable[[], None] | None = None,
    **options: Any,
) -> None:
    taken = _Taken()
    options.setdefault("recursive", True)
    inbox = Inbox(
        folder, ("*.yaml",), settle_seconds=settle, polling=polling, on_ready=taken, **options
    )
    inbox.start()

    async def tick() -> None:  # the service's tick: look again at files not yet complete,
        while True:  # and rescan after lost events (an inotify queue overflow), as it does
            await asyncio.sleep(0.05)
            if inbox.rescan_needed.is_set():
                inbox.rescan_needed.clear()
                inbox.scan()
            inbox.check_all()

    ticker = asyncio.create_task(tick())
    try:
        await body(inbox, taken)
    finally:
        ticker.cancel()
        inbox.stop()


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
async def test_a_file_dropped_right_after_mkdir_p_is_taken(tmp_path: Path, polling: bool) -> None:
    async def body(inbox: Inbox, taken: _Taken) -> None:
        await taken.fence(tmp_path)  # the observer is running (polling: its first snapshot)
        for i in range(5):
            deep = tmp_path / f"batch{i}" / "b" / "c"
            os.makedirs(deep)  # no pause: the file may come before watchdog's watch on it
            path = _drop(deep / "job.yaml", old=False)
            assert await taken.until(path) == []

    await _with_tree(tmp_path, body, polling=polling)


async def test_a_new_subfolder_is_listed_whatever_its_files_events(tmp_path: Path) -> None:
    """inotify gives no event for a file made before the watch on its new folder existed:
    the folder's own event must be enough (watchdog's event fed in, the observer stopped)."""

    async def body(inbox: Inbox, taken: _Taken) -> None:
        inbox.stop()  # no event from the observer now: only the one fed in below
        path = _drop(tmp_path / "new" / "sub" / "job.yaml")
        inbox._on_event(DirCreatedEvent(str(tmp_path / "new")))
        assert await taken.next() == path

    await _with_tree(tmp_path, body, settle=60.0)


async def test_a_replayed_created_event_in_a_new_subfolder_is_no_arrival(tmp_path: Path) -> None:
    """watchdog replays a new folder's files as created events; one still open for writing
    must wait for its close, not go after the moved-in grace."""

    async def body(inbox: Inbox, taken: _Taken) -> None:
        inbox.stop()
        path = tmp_path / "new" / "job.yaml"
        path.parent.mkdir()
        with open(path, "w") as handle:
            handle.write("timeout: 1\n")
            handle.flush()
            inbox._on_event(DirCreatedEvent(str(path.parent)))
            inbox._on_event(FileCreatedEvent(str(path)))  # the replay, as watchdog sends it
            await asyncio.sleep(0.3)  # the scenario: well past a moved-in file's grace
            inbox.check_all()
            assert taken.seen == []

    await _with_tree(tmp_path, body, settle=60.0)


async def test_depth_is_bounded(tmp_path: Path) -> None:
    at_limit = _drop(tmp_path / "a" / "b" / "at-limit.yaml")
    _drop(tmp_path / "a" / "b" / "c" / "too-deep.yaml")

    async def body(inbox: Inbox, taken: _Taken) -> None:
        assert taken.drain() == [at_limit]  # the scan at start
        live = _drop(tmp_path / "x" / "y" / "live.yaml", old=False)
        _drop(tmp_path / "x" / "y" / "z" / "live-too-deep.yaml", old=False)
        assert await taken.until(live) == []
        assert inbox.scan() == 0
        assert await taken.fence(tmp_path) == []

    await _with_tree(tmp_path, body, max_depth=2)


async def test_dotfolders_are_skipped(tmp_path: Path) -> None:
    _drop(tmp_path / ".staging" / "job.yaml")
    _drop(tmp_path / "a" / ".tmp" / "deep" / "job.yaml")
    seen = _drop(tmp_path / "a" / "job.yaml")

    async def body(inbox: Inbox, taken: _Taken) -> None:
        assert taken.drain() == [seen]
        _drop(tmp_path / ".staging" / "later.yaml")
        _drop(tmp_path / ".new" / "sub" / "later.yaml")
        assert inbox.scan() == 0
        assert await taken.fence(tmp_path) == []

    await _with_tree(tmp_path, body)


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
async def test_a_symlinked_folder_is_not_followed(tmp_path: Path, polling: bool) -> None:
    inbox_folder, outside = tmp_path / "inbox", tmp_path / "outside"
    _drop(outside / "before.yaml")
    inbox_folder.mkdir()
    (inbox_folder / "link").symlink_to(outside)

    async def body(inbox: Inbox, taken: _Taken) -> None:
        assert taken.seen == []
        await taken.fence(inbox_folder)  # watching (polling: its first snapshot is taken)
        _drop(outside / "after.yaml")
        (inbox_folder / "link2").symlink_to(outside)
        assert inbox.scan() == 0
        # Twice: polling may report a change one poll after the first fence's.
        assert await taken.fence(inbox_folder) == []
        assert await taken.fence(inbox_folder) == []

    await _with_tree(inbox_folder, body, polling=polling)


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
async def test_a_subfolder_moved_in_is_scanned_and_one_moved_out_forgotten(
    tmp_path: Path, polling: bool
) -> None:
    inbox_folder, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox_folder.mkdir()
    made = [_drop(outside / "batch" / f"{i}.yaml") for i in range(3)]
    made.append(_drop(outside / "batch" / "deeper" / "3.yaml"))

    async def body(inbox: Inbox, taken: _Taken) -> None:
        await taken.fence(inbox_folder)
        os.rename(outside / "batch", inbox_folder / "batch")
        expected = {inbox_folder / p.relative_to(outside) for p in made}
        got = {await taken.next() for _ in expected}
        assert got == expected
        # A folder of files not yet complete, moved away: its candidates go with it.
        fresh = _drop(inbox_folder / "going" / "job.yaml", old=False)
        os.rename(fresh.parent, outside / "going")
        await taken.fence(inbox_folder)
        assert inbox.pending == 0

    await _with_tree(inbox_folder, body, polling=polling, settle=60.0)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("oldest", ["b/2", "c", "a/1"]),
        ("newest", ["a/1", "c", "b/2"]),
        ("name", ["a/1", "b/2", "c"]),
    ],
)
async def test_a_backlog_is_handed_out_in_order(
    tmp_path: Path, order: str, expected: list[str]
) -> None:
    for age, name in [(100, "a/1"), (300, "b/2"), (200, "c")]:
        path = _drop(tmp_path / f"{name}.yaml")
        os.utime(path, (LONG_AGO - age, LONG_AGO - age))

    async def body(inbox: Inbox, taken: _Taken) -> None:
        assert taken.seen == [tmp_path / f"{name}.yaml" for name in expected]

    await _with_tree(tmp_path, body, order=order)


async def test_an_inbox_reached_through_a_symlink_names_deep_files_through_it(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    (real / "a" / "b").mkdir(parents=True)
    link = tmp_path / "inbox"
    link.symlink_to(real)

    async def body(inbox: Inbox, taken: _Taken) -> None:
        staged = _drop(tmp_path / "job.yaml", old=False)
        os.rename(staged, real / "a" / "b" / "job.yaml")  # an event only: no scan finds it
        assert await taken.next() == link / "a" / "b" / "job.yaml"

    await _with_tree(link, body, settle=600.0)


async def test_not_recursive_ignores_subfolders(tmp_path: Path) -> None:
    _drop(tmp_path / "sub" / "before.yaml")
    top = _drop(tmp_path / "top.yaml")

    async def body(inbox: Inbox, taken: _Taken) -> None:
        assert taken.drain() == [top]
        _drop(tmp_path / "sub" / "after.yaml")
        _drop(tmp_path / "new" / "after.yaml")
        assert inbox.scan() == 0
        assert await taken.fence(tmp_path) == []
        assert inbox.watch_count() in (None, 1)

    await _with_tree(tmp_path, body, recursive=False)


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="Linux /proc only")
async def test_watch_count_counts_the_inotify_watches(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)

    async def body(inbox: Inbox, taken: _Taken) -> None:
        assert inbox.watch_count() == 3  # the inbox, a, a/b
        (tmp_path / "c").mkdir()
        await taken.fence(tmp_path)
        assert inbox.watch_count() == 4

    await _with_tree(tmp_path, body)


async def test_watch_count_is_none_when_polling(tmp_path: Path) -> None:
    async def body(inbox: Inbox, taken: _Taken) -> None:
        assert inbox.watch_count() is None

    await _with_tree(tmp_path, body, polling=True)


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="Linux /proc only")
async def test_many_nested_folders_at_once_leave_the_observer_alive(tmp_path: Path) -> None:
    """watchdog warns when `mkdir -p` races its walk; where warnings are errors (as here), that
    warning raised in its reader thread would end it and every watch after it."""

    async def body(inbox: Inbox, taken: _Taken) -> None:
        for i in range(500):
            os.makedirs(tmp_path / f"t{i}" / "a" / "b" / "c")
        last = _drop(tmp_path / "t499" / "a" / "b" / "c" / "job.yaml", old=False)
        await taken.until(last)
        await taken.fence(tmp_path)
        assert inbox.healthy()
        # Under load the kernel's event queue may overflow (watchdog then re-adds the watches
        # below the inbox, on its own thread): every folder is watched once that is done.
        deadline = time.monotonic() + 20
        while (count := inbox.watch_count()) != 1 + 500 * 4:
            assert time.monotonic() < deadline, count
            await asyncio.sleep(0.05)

    await _with_tree(tmp_path, body)


async def test_an_inbox_that_cannot_be_listed_raises_from_scan(tmp_path: Path) -> None:
    """The serve loop reports and retries what `scan` raises for the inbox itself (a subfolder
    that cannot be listed is only logged)."""
    folder = tmp_path / "in"

    async def body(inbox: Inbox, taken: _Taken) -> None:
        inbox.stop()
        folder.rmdir()
        folder.write_text("not a folder\n")
        with pytest.raises(NotADirectoryError):
            inbox.scan()

    await _with_tree(folder, body)
