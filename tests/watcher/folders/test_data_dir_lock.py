"""One service per `data_dir`: a live owner refuses the next one, naming it; a dead owner's
lock still held by its server (stopping PostgreSQL) is waited for. Real processes hold the
locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from watcher.folders.lock import DataDirLock, DataDirTaken, Owner

# Holds the lock the way a service (flock on the folder) or its Windows fallback (a lock
# file) does, until its stdin closes.
_HOLDER = """
import sys
from pathlib import Path
from watcher.folders.lock import DataDirLock, Owner
lock = DataDirLock(Path(sys.argv[1]), folder_lock=sys.argv[2] == "1")
lock.acquire(Owner.me("2026-12-06T00:00:00+00:00"), __import__("threading").Event())
print("held", flush=True)
sys.stdin.read()
"""


def _holder(data_dir: Path, folder_lock: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(data_dir), "1" if folder_lock else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(timeout=30)
    proc.stdout.close()


@pytest.mark.parametrize("folder_lock", [True, False], ids=["flock", "lock-file"])
def test_a_live_owner_is_named_and_the_next_service_refused(
    tmp_path: Path, folder_lock: bool
) -> None:
    holder = _holder(tmp_path, folder_lock)
    try:
        with pytest.raises(DataDirTaken, match=f"another dropflow \\(pid {holder.pid} on") as err:
            DataDirLock(tmp_path, folder_lock=folder_lock).acquire(
                Owner.me("now"), threading.Event(), wait=5
            )
        assert "has not stopped" not in str(err.value)  # refused as live, not after waiting
    finally:
        _release(holder)
    lock = DataDirLock(tmp_path, folder_lock=folder_lock)
    lock.acquire(Owner.me("now"), threading.Event(), wait=0)
    assert json.loads((tmp_path / ".dropflow-owner.json").read_text())["pid"] == os.getpid()
    assert len(lock.fds()) == (1 if folder_lock else 0)
    lock.release()


def test_a_dead_owners_lock_still_held_by_its_server_is_waited_for(tmp_path: Path) -> None:
    holder = _holder(tmp_path, True)
    # The owner record names a service that has died; its server still holds the lock.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    record = json.loads((tmp_path / ".dropflow-owner.json").read_text())
    record["pid"] = int(dead.stdout)
    (tmp_path / ".dropflow-owner.json").write_text(json.dumps(record))
    lock = DataDirLock(tmp_path)
    errors: list[BaseException] = []

    def take() -> None:
        try:
            lock.acquire(Owner.me("now"), threading.Event(), wait=60)
        except BaseException as exc:
            errors.append(exc)

    taker = threading.Thread(target=take)
    taker.start()
    taker.join(0.5)
    assert taker.is_alive() and not errors  # waiting, not refused
    _release(holder)
    taker.join(30)
    assert not taker.is_alive() and not errors
    lock.release()
