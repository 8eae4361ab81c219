"""Folders as installations have them, end to end: a second service on the same folders, an
archive and results on other file systems, folders removed or broken at run time, and the
paths other platforms take (portable mode)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import ServiceFactory
from tests.harness import (
    ServiceProcess,
    archived_files,
    archived_names,
    audit,
    claim_folders,
    wait_until,
)
from watcher.folders.archive import claimed_day

PORTABLE = {"DROPFLOW_PORTABLE": "1"}


def _results(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- one owner -----------------------------------------------------------------------------


def test_a_second_service_waits_as_standby_and_takes_over(service: ServiceFactory) -> None:
    owner = service()
    standby = service(start=False).start(wait=False)
    assert owner.proc is not None
    standby.wait_for_log("standby:")
    line = next(x for x in standby.log().splitlines() if "standby:" in x)
    assert f"pid {owner.proc.pid} on {socket.gethostname()}, since " in line
    owner.drop("long.yaml", "timeout: 60\nsleep: 6\n")  # still running when killed
    owner.wait_for_log("job started: long.yaml")
    assert "watching" not in standby.log() and "recovering" not in standby.log()
    owner.kill()
    standby.wait_for_log("taking over", timeout=10)
    standby.wait_for_log("recovering 1 job(s)")
    standby.drop("after.yaml", "sleep: 0\n")
    assert standby.wait_result("after.yaml")["status"] == "completed"
    assert standby.wait_result("long.yaml", timeout=60)["attempt"] == 2
    assert _results(standby.results) == ["after.result.yaml", "long.result.yaml"]


def test_no_standby_exits_2_naming_the_owner(service: ServiceFactory) -> None:
    owner = service()
    other = service(start=False).start(wait=False, args=("--no-standby",))
    assert other.proc is not None and owner.proc is not None
    assert other.proc.wait(timeout=60) == 2
    other.output.join()
    assert f"is served by another dropflow (pid {owner.proc.pid} on " in other.log()
    owner.drop("a.yaml", "sleep: 0\n")
    assert owner.wait_result("a.yaml")["status"] == "completed"


# -- other file systems --------------------------------------------------------------------


def test_archive_and_results_on_other_file_systems(
    service: ServiceFactory, tmp_path: Path, tmpfs: Callable[[Path], Path]
) -> None:
    tmpfs(tmp_path / "archive")
    tmpfs(tmp_path / "results")
    svc = service()
    for name in ("a.yaml", "b.yaml"):
        svc.drop(name, "sleep: 0\n")
    for name in ("a.yaml", "b.yaml"):
        assert svc.wait_result(name)["status"] == "completed"
    wait_until(lambda: archived_names(svc.archive) == ["a.yaml", "b.yaml"], 20)
    wait_until(lambda: claim_folders(svc.processing) == [], 20)
    assert _results(svc.results) == ["a.result.yaml", "b.result.yaml"]


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; the filler file is returned."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_dated_archive_on_another_file_system_across_a_kill_and_a_restart(
    service: ServiceFactory, tmp_path: Path, tmpfs: Callable[[Path], Path]
) -> None:
    """Each job is filed under the UTC day its claim id gives (`archive_layout: daily`, the
    default), on the archive's own file system; a job whose archiving a full disk held up
    when the service was killed is filed there by the next start, its result not written
    again."""
    archive = tmpfs(tmp_path / "archive", size="1m")
    svc = service()
    svc.drop("a.yaml", "sleep: 0\n")
    first = svc.wait_result("a.yaml")
    filed = archive / claimed_day(first["claim_id"]) / "a.yaml"
    wait_until(filed.exists, 20)
    filler = _fill(archive)
    svc.drop("b.yaml", "sleep: 0\n")
    second = svc.wait_result("b.yaml")
    svc.wait_for_log("b.yaml: cannot write its result", 30)
    assert len(claim_folders(svc.processing)) == 1
    svc.kill()
    filler.unlink()
    svc.start()
    held = archive / claimed_day(second["claim_id"]) / "b.yaml"
    wait_until(held.exists, 30)
    wait_until(lambda: claim_folders(svc.processing) == [], 20)
    assert archived_files(archive) == sorted([filed, held])
    assert {os.stat(p).st_dev for p in (filed, held)} == {os.stat(archive).st_dev}
    assert os.stat(archive).st_dev != os.stat(svc.processing).st_dev
    assert _results(svc.results) == ["a.result.yaml", "b.result.yaml"]


def test_processing_on_another_file_system_is_refused_at_start(
    service: ServiceFactory, tmp_path: Path, tmpfs: Callable[[Path], Path]
) -> None:
    tmpfs(tmp_path / "processing")
    svc = service(start=False).start(wait=False)
    assert svc.proc is not None and svc.proc.wait(timeout=60) == 2
    svc.output.join()
    assert "inbox (" in svc.log() and "processing (" in svc.log()
    assert "different file systems" in svc.log()


# -- folders broken at run time ------------------------------------------------------------


def test_an_archive_folder_removed_at_run_time_is_recreated(service: ServiceFactory) -> None:
    svc = service()
    shutil.rmtree(svc.archive)
    svc.drop("a.yaml", "sleep: 0\n")
    assert svc.wait_result("a.yaml")["status"] == "completed"
    (archived,) = wait_until(lambda: archived_files(svc.archive), 20)
    assert archived.name == "a.yaml" and yaml.safe_load(archived.read_text()) == {"sleep": 0}


def test_a_failing_archive_never_publishes_again(service: ServiceFactory) -> None:
    svc = service()
    shutil.rmtree(svc.archive)
    svc.archive.write_text("not a folder")  # every archive attempt fails
    svc.drop("a.yaml", "sleep: 0\n")
    assert svc.wait_result("a.yaml")["status"] == "completed"
    svc.wait_for_log("cannot write its result", 30)
    assert _results(svc.results) == ["a.result.yaml"]
    svc.archive.unlink()
    wait_until(lambda: archived_names(svc.archive) == ["a.yaml"], 60)
    svc.wait_for_log("a.yaml: its result could be written again", 10)
    # Every failed try had the same error: said once, not at each try.
    assert svc.log().count("cannot write its result") == 1
    wait_until(lambda: claim_folders(svc.processing) == [], 20)
    assert _results(svc.results) == ["a.result.yaml"]


# -- portable mode: the paths other platforms take -----------------------------------------


def test_portable_mode_runs_every_outcome(service: ServiceFactory, tmp_path: Path) -> None:
    svc = service(extra_env=PORTABLE)
    svc.wait_for_log("portable mode")
    secret = tmp_path / "secret.txt"
    secret.write_text("password: hunter2\n")
    svc.drop("done.yaml", "sleep: 0\n")
    svc.drop("late.yaml", "timeout: 0.5\nsleep: 5\n")
    svc.drop("bad.yaml", "timeout: ten\n")
    os.symlink(secret, svc.inbox / "link.yaml")
    os.link(secret, svc.inbox / "hard.yaml")
    assert svc.wait_result("done.yaml")["status"] == "completed"
    assert svc.wait_result("late.yaml")["status"] == "canceled"
    assert "timeout" in svc.wait_result("bad.yaml")["message"]
    assert "symbolic link" in svc.wait_result("link.yaml")["message"]
    assert "hard link" in svc.wait_result("hard.yaml")["message"]
    assert "hunter2" not in svc.log()
    wait_until(lambda: claim_folders(svc.processing) == [], 20)


def test_portable_mode_kill_9_loses_nothing(service: ServiceFactory, tmp_path: Path) -> None:
    names = [f"k{i}.yaml" for i in range(8)]
    svc = service({"max_concurrent_jobs": 4}, extra_env=PORTABLE)
    for name in names:
        svc.drop(name, "timeout: 10\nsleep: 1\n")
    svc.wait_for_log("job started: ")
    svc.kill()
    again = service({"max_concurrent_jobs": 4}, extra_env=PORTABLE)
    wait_until(lambda: len(_results(again.results)) == len(names), 90)
    wait_until(lambda: claim_folders(again.processing) == [], 20)
    report = audit(tmp_path, names)
    assert report["lost"] == report["duplicates"] == report["partial"] == []
    assert report["leftovers"] == [] and report["not_archived"] == []


def test_portable_mode_retries_a_file_its_writer_still_holds_open(
    service: ServiceFactory,
) -> None:
    svc = service(extra_env=PORTABLE)
    with open(svc.inbox / "open.yaml", "w") as writer:
        writer.write("sleep: 0\n")
        writer.flush()
        # Settled (no close events in portable mode) but still open: Windows refuses to move it.
        svc.wait_for_log("open.yaml: not taken yet")
        assert not svc.result_path("open.yaml").exists()
        assert (svc.inbox / "open.yaml").exists()
    assert svc.wait_result("open.yaml")["status"] == "completed"
    assert "error" not in _results(svc.results)


def test_a_standby_stops_cleanly_on_sigterm(service: ServiceFactory) -> None:
    service()
    standby = service(start=False).start(wait=False)
    standby.wait_for_log("standby:")
    assert standby.stop(signal.SIGTERM, timeout=30) == 0
    assert "stopped before taking over" in standby.log()


# -- folders changed under the running service (issue 19) ----------------------------------


def _exchange(a: Path, b: Path) -> None:
    """Swap two names in one step (`renameat2(RENAME_EXCHANGE)`, what `mv --exchange` does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange):
        raise OSError(ctypes.get_errno(), "renameat2 failed", str(a))


def _replace_inbox(inbox: Path, how: str) -> Path:
    """Put a new, empty folder at the inbox's path in one step; the folder that was there."""
    old = inbox.with_name("inbox.bak")
    if how == "mv-mkdir":
        os.rename(inbox, old)
        inbox.mkdir(exist_ok=True)  # the service may have recreated it meanwhile
        return old
    new = inbox.with_name("inbox.new")
    new.mkdir()
    if how == "exchange":
        _exchange(new, inbox)
        os.rename(new, old)
    else:  # "symlink": the path becomes a link to the new folder
        link = inbox.with_name("inbox.link")
        link.symlink_to(new.name)
        _exchange(link, inbox)
        os.rename(link, old)
    return old


@pytest.mark.parametrize("how", ["mv-mkdir", "exchange", "symlink"])
def test_a_replaced_inbox_is_watched_again_within_a_second(
    service: ServiceFactory, how: str
) -> None:
    svc = service()  # rescans every 30 s: a job waiting for one would take 15-30 s
    svc.drop("before.yaml", "sleep: 0\n")
    assert svc.wait_result("before.yaml")["status"] == "completed"
    _replace_inbox(svc.inbox, how)
    svc.drop("after.yaml", "sleep: 0\n")  # into the new folder, at once
    assert svc.wait_result("after.yaml", timeout=5)["status"] == "completed"
    assert svc.log().count("was replaced") == 1
    assert "restarting" not in svc.log() and "ERROR" not in svc.log()
    line = next(x for x in svc.log().splitlines() if "was replaced" in x)
    assert f"WARNING | watcher.service.loop - inbox {svc.inbox} was replaced (device " in line
    assert line.endswith(": watching the new folder")


def test_an_inbox_on_another_file_system_waits_with_backoff_and_nothing_is_lost(
    service: ServiceFactory, tmp_path: Path, tmpfs: Callable[[Path], Path]
) -> None:
    other = tmpfs(tmp_path / "other-disk") / "inbox"
    other.mkdir()
    svc = service()
    old = svc.inbox.with_name("inbox.bak")
    svc.inbox.rename(old)
    svc.inbox.symlink_to(other)
    names = ["x1.yaml", "x2.yaml", "x3.yaml"]
    for name in names:  # written in place, through the link (a rename in would cross too)
        (svc.inbox / name).write_text("sleep: 0\n")
    svc.wait_for_log("cannot claim ", timeout=40)  # before this change: at the 30 s rescan
    # The scenario, not a synchronisation: the fault lasts 4 s (a claim a second per file
    # before this change: a dozen lines).
    time.sleep(4)
    assert svc.log().count("cannot claim ") == 1
    assert "Errno 18" in svc.log()
    assert "on another file system than processing" in svc.log()  # said when it was replaced
    assert sorted(p.name for p in other.iterdir()) == names  # still in the inbox
    # Put it right: a real inbox on the right file system again, with the jobs in it.
    svc.inbox.unlink()
    old.rename(svc.inbox)
    for name in names:
        shutil.move(other / name, svc.inbox / name)
    for name in names:
        assert svc.wait_result(name, timeout=45)["status"] == "completed"
    assert svc.log().count("claims work again") == 1
    assert svc.log().count("cannot claim ") == 1


def test_inodes_running_out_waits_with_backoff_and_nothing_is_lost(
    service: ServiceFactory, tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    disk = tmpfs(tmp_path / "disk", "16m,nr_inodes=64")  # the fixture's size= takes options
    svc = service({"inbox": "disk/inbox", "processing": "disk/processing"})
    svc.wait_for_log("runner: ")  # the owner record is rewritten then: it needs an inode
    names = ["n1.yaml", "n2.yaml", "n3.yaml"]
    staging = disk / "staging"
    staging.mkdir()
    for name in names:
        (staging / name).write_text("sleep: 0\n")
    fillers = disk / "fillers"
    fillers.mkdir()
    with contextlib.suppress(OSError):
        for i in range(1000):
            (fillers / str(i)).touch()
    assert len(list(fillers.iterdir())) < 1000  # the inodes ran out
    for name in names:  # a rename needs no new inode; the claim's folder does
        os.rename(staging / name, svc.inbox / name)
    svc.wait_for_log("cannot claim ", timeout=10)
    time.sleep(4)  # the scenario: 4 s without inodes
    assert svc.log().count("cannot claim ") == 1
    assert "Errno 28" in svc.log()
    assert sorted(p.name for p in svc.inbox.iterdir()) == names
    shutil.rmtree(fillers)
    for name in names:
        assert svc.wait_result(name, timeout=45)["status"] == "completed"
    assert svc.log().count("claims work again") == 1


def _exit_status(svc: ServiceProcess, timeout: float = 20) -> int:
    """Wait for the service to exit on its own."""
    assert svc.proc is not None
    code = svc.proc.wait(timeout=timeout)
    svc.output.join()
    return code


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_processing_unmounted_stops_the_service_with_status_1(
    service: ServiceFactory, tmp_path: Path, tmpfs: Callable[[Path], Path]
) -> None:
    tmpfs(tmp_path / "disk")  # the inbox and processing share it, as they must
    svc = service({"inbox": "disk/inbox", "processing": "disk/processing", "shutdown_grace": 30})
    (svc.inbox / "long.yaml").write_text("timeout: 60\nsleep: 30\n")  # the disk's own file
    svc.wait_for_log("job started: long.yaml")
    _unmount(tmp_path / "disk")
    t0 = time.monotonic()
    assert _exit_status(svc) == 1
    assert time.monotonic() - t0 < 10  # no grace: nothing a job does could be recorded
    line = next(x for x in svc.log().splitlines() if "stopping: processing" in x)
    assert "ERROR" in line and str(svc.processing) in line
    assert "Traceback" not in svc.log()


@pytest.mark.parametrize("how", ["lock-file-removed", "lock-file-replaced", "renamed"])
def test_processing_or_its_lock_lost_stops_the_service_with_status_1(
    service: ServiceFactory, how: str
) -> None:
    svc = service()
    lock = svc.processing / ".dropflow.lock"
    if how == "lock-file-removed":
        lock.unlink()
    elif how == "lock-file-replaced":
        lock.with_name("new-lock").write_text("")
        os.replace(lock.with_name("new-lock"), lock)
    else:
        svc.processing.rename(svc.processing.with_name("processing.old"))
        svc.processing.mkdir()
    assert _exit_status(svc) == 1
    line = next(x for x in svc.log().splitlines() if "stopping: " in x)
    assert "ERROR" in line and str(svc.processing) in line


def test_results_bind_mounted_onto_the_inbox_while_serving_stops_the_service(
    service: ServiceFactory, bind: Callable[[Path, Path], None]
) -> None:
    svc = service()
    bind(svc.inbox, svc.results)  # each result would be taken for a new job, for ever
    assert _exit_status(svc) == 1
    line = next(x for x in svc.log().splitlines() if "stopping: " in x)
    assert f"ERROR   | watcher.service.loop - stopping: results ({svc.results}) is the " in line
    assert f"same folder as inbox ({svc.inbox})" in line


@pytest.mark.parametrize(
    ("key", "relation"),
    [("results", "is the same folder as"), ("archive", "is inside"), ("processing", "contains")],
)
def test_a_folder_that_is_the_inbox_under_another_path_is_refused_at_start(
    service: ServiceFactory,
    tmp_path: Path,
    bind: Callable[[Path, Path], None],
    key: str,
    relation: str,
) -> None:
    config: dict[str, str] = {}
    if key == "results":  # a bind mount of the inbox
        (tmp_path / "inbox").mkdir()
        bind(tmp_path / "inbox", tmp_path / "results")
    elif key == "archive":  # a symlink into it
        (tmp_path / "inbox" / "done").mkdir(parents=True)
        (tmp_path / "archive").symlink_to(tmp_path / "inbox" / "done")
    else:  # processing is a bind mount of a folder that holds the inbox
        (tmp_path / "work" / "in").mkdir(parents=True)
        bind(tmp_path / "work", tmp_path / "processing")
        config["inbox"] = "work/in"
    svc = service(config, start=False).start(wait=False)
    assert svc.proc is not None and svc.proc.wait(timeout=30) == 2
    svc.output.join()
    message = f"{key} ({tmp_path / key}) {relation} inbox ({svc.inbox})"
    assert message in svc.log(), svc.log()
