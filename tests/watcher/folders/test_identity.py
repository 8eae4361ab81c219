"""Folders known by identity, on real folders, symlinks and bind mounts (root)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from watcher.folders import identity
from watcher.folders.lock import LOCK_NAME, FolderLock

Bind = Callable[[Path, Path], None]


def test_a_bind_mount_is_the_folder_it_mounts(tmp_path: Path, bind: Bind) -> None:
    (tmp_path / "inbox" / "sub").mkdir(parents=True)
    bind(tmp_path / "inbox", tmp_path / "view")
    assert identity.overlap(tmp_path / "view", tmp_path / "inbox") == "is"
    assert identity.overlap(tmp_path / "view" / "sub", tmp_path / "inbox") == "is inside"
    assert identity.overlap(tmp_path / "inbox", tmp_path / "view" / "sub") == "contains"


def test_a_symlink_is_the_folder_it_leads_to(tmp_path: Path) -> None:
    (tmp_path / "inbox" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "inbox" / "sub")
    assert identity.overlap(tmp_path / "link", tmp_path / "inbox") == "is inside"
    assert identity.overlap(tmp_path / "inbox", tmp_path / "link") == "contains"


def test_folders_side_by_side_do_not_overlap(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "results").mkdir()
    assert identity.overlap(tmp_path / "results", tmp_path / "inbox") is None


def test_without_inode_numbers_nothing_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where st_ino is 0 (some Windows file systems), identities are unavailable."""
    (tmp_path / "inbox").mkdir()
    real_stat = os.stat

    def no_inode(*args: Any, **kwargs: Any) -> os.stat_result:
        info = list(real_stat(*args, **kwargs))
        info[1] = 0  # st_ino
        return os.stat_result(info)

    monkeypatch.setattr(os, "stat", no_inode)
    assert identity.of(tmp_path / "inbox") is None
    assert identity.overlap(tmp_path / "inbox", tmp_path / "inbox") is None


# -- the lock file is the one held ---------------------------------------------------------


def _locked(tmp_path: Path) -> FolderLock:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "processing").mkdir()
    lock = FolderLock(tmp_path / "inbox", tmp_path / "processing")
    assert lock.try_acquire()
    return lock


def test_a_held_lock_is_not_lost(tmp_path: Path) -> None:
    lock = _locked(tmp_path)
    try:
        assert lock.lost() is None
    finally:
        lock.release()


def test_a_removed_lock_file_is_a_lost_lock(tmp_path: Path) -> None:
    lock = _locked(tmp_path)
    try:
        (tmp_path / "processing" / LOCK_NAME).unlink()
        assert "is gone" in str(lock.lost())
    finally:
        lock.release()


def test_a_replaced_lock_file_is_a_lost_lock_that_another_service_could_take(
    tmp_path: Path,
) -> None:
    lock = _locked(tmp_path)
    try:
        path = tmp_path / "processing" / LOCK_NAME
        (tmp_path / "processing" / "new").write_text("")
        os.replace(tmp_path / "processing" / "new", path)
        assert "was replaced" in str(lock.lost())
    finally:
        lock.release()


def test_a_new_inbox_another_service_holds_cannot_be_relocked(tmp_path: Path) -> None:
    lock = _locked(tmp_path)
    inbox = tmp_path / "inbox"
    try:
        inbox.rename(tmp_path / "inbox.bak")
        inbox.mkdir()
        other = FolderLock(inbox, tmp_path / "elsewhere")
        (tmp_path / "elsewhere").mkdir()
        assert other.try_acquire()  # another service took the new folder first
        try:
            assert lock.relock_inbox() is False
        finally:
            other.release()
        assert lock.relock_inbox() is True
    finally:
        lock.release()
