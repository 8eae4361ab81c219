"""The claim → publish → archive lifecycle against the real file system: races with other
claimers and writers, an archive on another file system, crashes at every step of a move,
and the fallbacks other platforms take."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watcher import features
from watcher.folders import archive, claims, durable
from watcher.folders.archive import claimed_day
from watcher.folders.claims import Claim, ClaimStore
from watcher.folders.durable import TEMP_PREFIX, fsync_dir, write_atomic
from watcher.folders.results import publish
from watcher.jobs.model import JobError
from watcher.jobs.reading import read_job_bytes


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    for name in ("inbox", "processing", "archive", "results"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.fixture
def processing(folders: Path) -> ClaimStore:
    return ClaimStore(folders / "processing", folders / "archive", folders / "inbox")


@pytest.fixture
def portable_mode() -> Iterator[None]:
    features.use(features.Platform.portable())
    yield
    features.use(features.Platform.native())


def _drop(folders: Path, name: str = "job.yaml", text: str = "timeout: 1\n") -> Path:
    path = folders / "inbox" / name
    path.write_text(text)
    return path


def _claimed(processing: ClaimStore, source: Path) -> Claim:
    claim = processing.claim(source)
    assert claim is not None
    return claim


# -- claims --------------------------------------------------------------------------------


def test_two_claimers_at_once_make_exactly_one_claim(folders: Path) -> None:
    first = ClaimStore(folders / "processing", folders / "archive", folders / "inbox")
    second = ClaimStore(folders / "processing", folders / "archive", folders / "inbox")
    for round_ in range(40):
        source = _drop(folders, f"race{round_}.yaml")
        barrier = threading.Barrier(2)
        got: list[Claim | None] = []

        def take(p: ClaimStore, source: Path, barrier: threading.Barrier, got: list[Any]) -> None:
            barrier.wait()
            got.append(p.claim(source))

        threads = [
            threading.Thread(target=take, args=(p, source, barrier, got)) for p in (first, second)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [c for c in got if c is not None]
        assert len(winners) == 1, f"round {round_}: {got}"
        assert not source.exists()
        assert winners[0].path.stat().st_nlink == 1
    assert len([p for p in (folders / "processing").iterdir()]) == 40


def test_a_file_replacing_the_job_while_it_is_claimed_is_a_new_job(
    folders: Path, processing: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _drop(folders, text="timeout: 1\n")
    replaced = threading.Event()

    def replace_during_the_claim(folder: Path) -> None:
        if not replaced.is_set():  # between the link and the removal of the inbox name
            replaced.set()
            newer = folders / "newer.tmp"
            newer.write_text("timeout: 2\n")
            os.replace(newer, source)
        fsync_dir(folder)

    monkeypatch.setattr(claims, "fsync_dir", replace_during_the_claim)
    claim = _claimed(processing, source)
    assert replaced.is_set()
    assert claim.path.read_text() == "timeout: 1\n"
    assert source.read_text() == "timeout: 2\n"
    assert [p.name for p in (folders / "inbox").iterdir()] == ["job.yaml"]


def test_recovery_restores_a_replacement_renamed_aside_by_a_crash(
    folders: Path, processing: ClaimStore
) -> None:
    claim = _claimed(processing, _drop(folders))
    # The crash came after the inbox name was renamed aside, and what was there was a new file.
    aside = folders / "inbox" / f"{claims.ASIDE_PREFIX}{claim.id}"
    aside.write_text("timeout: 3\n")
    processing.recover()
    assert not aside.exists()
    assert (folders / "inbox" / "job.yaml").read_text() == "timeout: 3\n"


# -- archive -------------------------------------------------------------------------------


def test_an_archive_folder_removed_at_run_time_is_recreated(
    folders: Path, processing: ClaimStore
) -> None:
    claim = _claimed(processing, _drop(folders))
    (folders / "archive").rmdir()
    archived = processing.finish(claim)
    assert archived == folders / "archive" / "job.yaml"
    assert archived.read_text() == "timeout: 1\n"
    assert not claim.folder.exists()


@pytest.fixture
def other_fs(folders: Path, tmpfs: Callable[[Path], Path]) -> ClaimStore:
    archive = tmpfs(folders / "archive-disk")
    assert os.stat(archive).st_dev != os.stat(folders / "processing").st_dev
    return ClaimStore(folders / "processing", archive, folders / "inbox")


def test_archive_on_another_file_system(folders: Path, other_fs: ClaimStore) -> None:
    claim = _claimed(other_fs, _drop(folders))
    archived = other_fs.finish(claim)
    assert archived is not None and archived.read_text() == "timeout: 1\n"
    assert sorted(p.name for p in other_fs.archive_dir.iterdir()) == ["job.yaml"]
    assert not claim.folder.exists()


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs."""


def _crash_after(target: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = getattr(target, name)

    def crashing(*args: Any, **kw: Any) -> Any:
        real(*args, **kw)
        raise Crash(name)

    monkeypatch.setattr(target, name, crashing)


def _crash_before(target: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def crashing(*args: Any, **kw: Any) -> Any:
        raise Crash(name)

    monkeypatch.setattr(target, name, crashing)


def _half_copy(folder: Path, source: Path, name: str) -> Path:
    (folder / f"{TEMP_PREFIX}{name}").write_bytes(source.read_bytes()[:3])
    raise Crash("copy_into")


def _link_only(tmp: Path, target: Path) -> None:
    os.link(tmp, target)
    raise Crash("place")


@pytest.mark.parametrize(
    "step",
    [
        "journal written",
        "half copied",
        "copied",
        "linked, temp not removed",
        "placed",
        "archived, claim not removed",
    ],
)
def test_a_crash_at_any_step_of_a_cross_device_archive_leaves_one_copy(
    step: str, folders: Path, other_fs: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = _claimed(other_fs, _drop(folders))
    with monkeypatch.context() as patch:
        if step == "journal written":
            _crash_before(archive, "copy_into", patch)
        elif step == "half copied":
            patch.setattr(archive, "copy_into", _half_copy)
        elif step == "copied":
            _crash_after(archive, "copy_into", patch)
        elif step == "linked, temp not removed":
            patch.setattr(archive, "place", _link_only)
        elif step == "placed":
            _crash_after(archive, "place", patch)
        else:
            _crash_before(claims.shutil, "rmtree", patch)
        with pytest.raises(Crash):
            other_fs.finish(claim)
    restarted = ClaimStore(folders / "processing", other_fs.archive_dir, folders / "inbox")
    for again in restarted.recover():
        assert again.id == claim.id and again.attempt == 2  # not staged: run again
        restarted.finish(again)
    assert sorted(p.name for p in other_fs.archive_dir.iterdir()) == ["job.yaml"]
    assert (other_fs.archive_dir / "job.yaml").read_text() == "timeout: 1\n"
    assert [p for p in (folders / "processing").iterdir()] == []


def test_jobs_of_one_name_each_keep_their_archived_copy_across_a_restart(
    folders: Path, other_fs: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _claimed(other_fs, _drop(folders, text="timeout: 1\n"))
    with monkeypatch.context() as patch:
        _crash_before(archive, "copy_into", patch)  # journaled as job.yaml, not moved yet
        with pytest.raises(Crash):
            other_fs.finish(first)
    restarted = ClaimStore(folders / "processing", other_fs.archive_dir, folders / "inbox")
    (first,) = restarted.recover()
    second = _claimed(restarted, _drop(folders, text="timeout: 2\n"))
    restarted.finish(second)  # must not take job.yaml, which the first one reserved
    restarted.finish(first)
    texts = sorted(p.read_text() for p in other_fs.archive_dir.iterdir())
    assert texts == ["timeout: 1\n", "timeout: 2\n"]
    assert (other_fs.archive_dir / "job.yaml").read_text() == "timeout: 1\n"


# -- the daily layout ----------------------------------------------------------------------


def _claimed_late_yesterday(claim: Claim) -> Claim:
    """The claim as if made at 23:59:59.999999 yesterday (UTC): its folder renamed to the id
    such a claim has, as a service stopped then and started today finds it."""
    late = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y%m%dT235959.999999")
    moved = replace(claim, id=f"{late}-{claim.id.rpartition('-')[2]}")
    os.rename(claim.folder, moved.folder)
    return moved


def _files(folder: Path) -> list[Path]:
    return sorted(
        Path(parent, name)
        for parent, _, names in os.walk(folder)
        for name in names
        if not name.startswith(".")
    )


@pytest.mark.parametrize("cut", ["not begun", "journal written", "copied"])
def test_a_claim_archived_after_midnight_goes_to_the_day_it_was_claimed(
    cut: str, folders: Path, tmpfs: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmpfs(folders / "archive-disk")
    store = ClaimStore(folders / "processing", disk, folders / "inbox", layout="daily")
    claim = _claimed_late_yesterday(_claimed(store, _drop(folders)))
    if cut != "not begun":
        with monkeypatch.context() as patch:
            crash = _crash_before if cut == "journal written" else _crash_after
            crash(archive, "copy_into", patch)
            with pytest.raises(Crash):
                store.finish(claim)
    restarted = ClaimStore(folders / "processing", disk, folders / "inbox", layout="daily")
    (again,) = restarted.recover()
    restarted.finish(again)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y/%m/%d")
    assert claimed_day(claim.id) == yesterday
    assert _files(disk) == [disk / yesterday / "job.yaml"]
    assert (disk / yesterday / "job.yaml").read_text() == "timeout: 1\n"
    assert list((folders / "processing").iterdir()) == []


def test_each_new_date_folder_is_made_durable_in_its_parent(
    folders: Path, other_fs: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []

    def spy(folder: Path) -> None:
        synced.append(folder)
        fsync_dir(folder)

    monkeypatch.setattr(durable, "fsync_dir", spy)
    disk = other_fs.archive_dir
    daily = ClaimStore(folders / "processing", disk, folders / "inbox", layout="daily")
    claim = _claimed(daily, _drop(folders))
    daily.finish(claim)
    day = disk / claimed_day(claim.id)
    for made in (day.parent.parent, day.parent, day):
        assert made.parent in synced, f"{made} made, {made.parent} not synced"
    assert synced.index(day.parent.parent.parent) < synced.index(day.parent)


def test_a_restart_with_another_layout_finishes_a_cut_move_where_it_began(
    folders: Path, other_fs: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing archived is moved: the cut move ends in the flat folder (its journal, a bare
    name, is also what a journal written before dated archives holds); new jobs go by date."""
    first = _claimed(other_fs, _drop(folders, "a.yaml"))
    with monkeypatch.context() as patch:
        _crash_after(archive, "copy_into", patch)  # copied to a temp name, not placed
        with pytest.raises(Crash):
            other_fs.finish(first)
    disk = other_fs.archive_dir
    daily = ClaimStore(folders / "processing", disk, folders / "inbox", layout="daily")
    (first,) = daily.recover()
    daily.finish(first)
    second = _claimed(daily, _drop(folders, "b.yaml"))
    daily.finish(second)
    assert _files(disk) == [disk / claimed_day(second.id) / "b.yaml", disk / "a.yaml"]
    assert [p.name for p in disk.iterdir() if p.name.startswith(".")] == []


# -- results -------------------------------------------------------------------------------


def test_results_on_another_file_system(folders: Path, tmpfs: Callable[[Path], Path]) -> None:
    results = tmpfs(folders / "results-disk")
    staged = write_atomic(folders / "processing", b"job: a.yaml\nclaim_id: c1\n")
    first = publish(results, staged, "a.yaml", "c1")
    again = publish(results, staged, "a.yaml", "c1", recovering=True)
    assert first == again == results / "a.result.yaml"
    assert [p.name for p in results.iterdir()] == ["a.result.yaml"]


# -- other platforms' paths ----------------------------------------------------------------


@pytest.mark.usefixtures("portable_mode")
def test_portable_claim_is_a_rename_and_publish_a_copy(
    folders: Path, processing: ClaimStore
) -> None:
    source = _drop(folders)
    inode = source.stat().st_ino
    claim = _claimed(processing, source)
    assert not source.exists() and claim.path.stat().st_ino == inode
    staged = write_atomic(claim.folder, b"job: job.yaml\nclaim_id: x\n")
    published = publish(folders / "results", staged, "job.yaml", "x")
    assert published.stat().st_ino != staged.stat().st_ino  # a copy, not a link
    archived = processing.finish(claim)
    assert archived is not None and archived.stat().st_ino == inode  # a rename


@pytest.mark.usefixtures("portable_mode")
def test_portable_mode_skips_folder_fsync(folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(durable.os, "fsync", synced.append)
    fsync_dir(folders)
    assert synced == []
    features.use(features.Platform.native())
    fsync_dir(folders)
    assert len(synced) == 1


@pytest.mark.usefixtures("portable_mode")
def test_without_nofollow_a_link_swapped_in_before_the_open_is_refused(
    folders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = folders / "secret.yaml"
    secret.write_text("timeout: 9\n")
    job = _drop(folders)
    real_open = os.open

    def swap_then_open(path: Any, flags: int, *args: Any) -> int:
        assert not flags & os.O_NOFOLLOW
        os.unlink(job)
        os.symlink(secret, job)
        return real_open(path, flags, *args)

    monkeypatch.setattr("watcher.jobs.reading.os.open", swap_then_open)
    with pytest.raises(JobError, match="symbolic link"):
        read_job_bytes(job, 1024)


@pytest.mark.usefixtures("portable_mode")
def test_a_file_open_by_its_writer_cannot_be_claimed_as_on_windows(
    folders: Path, processing: ClaimStore
) -> None:
    source = folders / "inbox" / "open.yaml"
    with open(source, "w") as writer:
        writer.write("timeout: 1\n")
        writer.flush()
        with pytest.raises(PermissionError):
            processing.claim(source)
        assert source.exists() and [p for p in processing.root.iterdir()] == []
    claim = _claimed(processing, source)
    assert claim.path.read_text() == "timeout: 1\n"


def _remove_the_staged_result_only(folder: Path, ignore_errors: bool = False) -> None:
    for name in (claims.STAGED_RESULT, claims.PUBLISHED):
        (folder / name).unlink(missing_ok=True)
    raise Crash("rmtree")


def test_a_crash_while_removing_a_finished_claim_never_runs_it_again(
    folders: Path, processing: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = _claimed(processing, _drop(folders))
    processing.stage(claim, b"status: completed\n")
    processing.mark_published(claim, folders / "results" / "job.result.yaml")
    with monkeypatch.context() as patch:
        patch.setattr(claims.shutil, "rmtree", _remove_the_staged_result_only)
        with pytest.raises(Crash):
            processing.finish(claim)
    restarted = ClaimStore(folders / "processing", folders / "archive", folders / "inbox")
    assert restarted.recover() == []
    assert [p.name for p in (folders / "archive").iterdir()] == ["job.yaml"]
    assert list((folders / "processing").iterdir()) == []


def _claim_entry(folders: Path, processing: ClaimStore, kind: str) -> Claim:
    entry = folders / "inbox" / f"{kind}.yaml"
    if kind == "dir":
        entry.mkdir()
        (entry / "inside.txt").write_text("x")
    else:
        os.symlink(folders / "elsewhere.txt", entry)
    return _claimed(processing, entry)


@pytest.mark.parametrize("kind", ["dir", "symlink"])
def test_an_entry_that_is_no_regular_file_is_archived(
    kind: str, folders: Path, processing: ClaimStore, other_fs: ClaimStore
) -> None:
    for p in (processing, other_fs):
        claim = _claim_entry(folders, p, kind)
        archived = p.finish(claim)
        assert archived is not None and archived.name == f"{kind}.yaml"
        if kind == "dir":
            assert (archived / "inside.txt").read_text() == "x"
        else:
            assert os.readlink(archived) == str(folders / "elsewhere.txt")
        assert not claim.folder.exists()


@pytest.mark.usefixtures("portable_mode")
def test_a_failure_after_a_rename_claim_keeps_the_only_copy(
    folders: Path, processing: ClaimStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _drop(folders)

    def failing_fsync(folder: Path) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(claims, "fsync_dir", failing_fsync)
        with pytest.raises(OSError):
            processing.claim(source)
    assert not source.exists()  # renamed: the claim holds the only name
    (recovered,) = processing.recover()
    assert recovered.path.read_text() == "timeout: 1\n"
