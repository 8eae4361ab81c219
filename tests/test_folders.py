"""Folders as installations have them, end to end: a second service on the same folders, an
archive and results on other file systems, folders removed or broken at run time, and the
paths other platforms take (portable mode)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import ServiceFactory
from tests.harness import audit, claim_folders, wait_until

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
    owner.drop("long.yaml", "timeout: 60\nsleep: 30\n")
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
    wait_until(lambda: _results(svc.archive) == ["a.yaml", "b.yaml"], 20)
    wait_until(lambda: claim_folders(svc.processing) == [], 20)
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
    wait_until(lambda: (svc.archive / "a.yaml").exists(), 20)
    assert yaml.safe_load((svc.archive / "a.yaml").read_text()) == {"sleep": 0}


def test_a_failing_archive_never_publishes_again(service: ServiceFactory) -> None:
    svc = service()
    shutil.rmtree(svc.archive)
    svc.archive.write_text("not a folder")  # every archive attempt fails
    svc.drop("a.yaml", "sleep: 0\n")
    assert svc.wait_result("a.yaml")["status"] == "completed"
    wait_until(lambda: svc.log().count("cannot write its result") >= 2, 30)
    assert _results(svc.results) == ["a.result.yaml"]
    svc.archive.unlink()
    wait_until(lambda: (svc.archive / "a.yaml").exists(), 60)
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
