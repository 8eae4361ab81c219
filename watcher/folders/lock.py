"""One service per set of folders: an OS lock, and a record of who holds it.

The lock is `filelock`'s native lock (flock on POSIX, `msvcrt.locking` on Windows) on
`<processing>/.dropflow.lock`, and a flock on the inbox folder itself (on Windows, which
cannot open a folder, a lock file `<inbox>/.dropflow.lock`; dotfiles are never jobs). The
operating system releases it when its holder dies, however it dies (kill -9 included), so a
standby service can take over without any stale-lock guessing. `filelock`'s "soft" fallback
(a marker file, which a killed holder leaves behind) is turned off: where a file system has
no locks at all, starting fails with a clear message instead.

The lock is only as good as its file: a lock file removed or replaced under the service (its
folder deleted, renamed or unmounted) lets a second service take a new one. `FolderLock.lost`
says when the file at the path is no longer the one held, for the service to stop.

Who holds the lock is recorded beside it in `<processing>/.dropflow-owner.json` (pid, host,
since when, runner, Prefect API), for the standby's log line and `dropflow status`. The
record is only informative: the lock is the truth, so a record left by a dead owner is
harmless.

On network file systems: NFSv4 (and v3 with lockd) carries flock locks to the server on
Linux; a client that dies is released once its lease expires (90 s by default), so a standby
on another machine takes over only then. SMB shares carry Windows byte-range locks, released
when the holder's session closes. A share mounted without lock support (`nolock`, `nobrl`)
makes every host believe it holds the lock: do not run two services on such a mount.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from watcher.folders import identity
from watcher.folders.durable import fsync_dir, write_atomic

__all__ = ["FolderLock", "LockError", "Owner", "is_held", "read_owner"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".dropflow.lock"
OWNER_NAME = ".dropflow-owner.json"
POLL_SECONDS = 0.1
"""How often a standby tries the lock: its takeover comes at most this long after the
owner's death (plus its own start-up)."""


class LockError(Exception):
    """The folders cannot be locked at all (no lock support, no permission)."""


@dataclass(frozen=True)
class Owner:
    """The service that holds a set of folders."""

    pid: int
    host: str
    since: str
    runner: str = ""
    api: str = ""

    def describe(self) -> str:
        """One line naming the owner: pid, host and since when."""
        return f"pid {self.pid} on {self.host}, since {self.since}"

    @classmethod
    def me(cls, since: str, runner: str = "", api: str = "") -> Owner:
        """This process."""
        return cls(os.getpid(), socket.gethostname(), since, runner, api)


def read_owner(processing: Path) -> Owner | None:
    """The owner recorded for the folders, or None if there is no readable record."""
    try:
        data = json.loads((processing / OWNER_NAME).read_text(encoding="utf-8"))
        return Owner(**{k: data[k] for k in ("pid", "host", "since", "runner", "api")})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _lock(folder: Path) -> FileLock:
    return FileLock(
        folder / LOCK_NAME,
        thread_local=False,
        fallback_to_soft=False,  # a marker file outlives a kill -9: never a real lock
        preserve_lock_file=True,  # unlinking a lock file races with the next locker
    )


class _FolderFlock:
    """flock on the folder itself, where the OS allows it (Linux, macOS, BSD).

    Written by hand because filelock only locks files, and a lock file in the inbox is one
    more entry in the users' folder. Windows cannot open a folder, so there the inbox gets
    filelock's lock file (a dotfile, never taken for a job).
    """

    def __init__(self, folder: Path) -> None:
        self.lock_file = str(folder)
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = False) -> None:
        import fcntl

        fd = os.open(self.lock_file, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise Timeout(self.lock_file) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock


class FolderLock:
    """The exclusive right to serve an inbox and a processing folder."""

    def __init__(self, inbox: Path, processing: Path) -> None:
        self.inbox = inbox
        self.processing = processing
        self._locks: list[FileLock | _FolderFlock] = [_lock(processing), _inbox_lock(inbox)]
        self._pinned: int | None = None  # the held lock file, opened once more: see `lost`

    def try_acquire(self) -> bool:
        """Take both locks if free, at once; False if another service holds either.

        Raises:
            LockError: the file system refuses locks, or the folders are not writable.
        """
        taken: list[FileLock | _FolderFlock] = []
        try:
            for lock in self._locks:
                lock.acquire(blocking=False)
                taken.append(lock)
        except Timeout:
            for lock in taken:
                lock.release()
            return False
        except (OSError, NotImplementedError) as exc:
            for lock in taken:
                lock.release()
            raise LockError(f"cannot lock {lock.lock_file}: {exc}") from exc
        self._pin()
        return True

    def _pin(self) -> None:
        # filelock keeps its descriptor to itself: this one names the same file (the lock is
        # held, so nobody replaced it since), and keeps its inode from being reused.
        try:
            self._pinned = os.open(self.processing / LOCK_NAME, os.O_RDONLY)
        except OSError as exc:
            logger.warning("cannot watch the lock file in %s: %s", self.processing, exc)

    def lost(self) -> str | None:
        """Why the lock no longer guards the folders, or None while it does.

        The lock file at the path must still be the file this service holds: if it was
        removed or replaced (its folder deleted, renamed or unmounted), another service can
        lock the new one. Where identities are unavailable only the file's presence counts.
        """
        if self._pinned is None:
            return None
        path = self.processing / LOCK_NAME
        try:
            there = identity.of(path)
        except OSError as exc:
            return f"the lock file {path} is gone ({exc.strerror or exc})"
        held = identity.of_fd(self._pinned)
        if there is not None and held is not None and there != held:
            return (
                f"the lock file {path} was replaced ({held.describe()} held, "
                f"{there.describe()} there now)"
            )
        return None

    def relock_inbox(self) -> bool:
        """Lock the folder now at the inbox's path (after it was replaced or recreated).

        False if another service holds it. The lock on the folder that was there is given up
        first: two locks of one process on one folder would exclude each other.
        """
        old = self._locks[1]
        if old.is_locked:
            old.release()
        new = self._locks[1] = _inbox_lock(self.inbox)
        try:
            new.acquire(blocking=False)
        except Timeout:
            return False
        except (OSError, NotImplementedError) as exc:
            logger.warning("cannot lock the new inbox %s: %s", self.inbox, exc)
        return True

    def wait(self, stop: threading.Event) -> bool:
        """Try the lock every `POLL_SECONDS` until taken (True) or `stop` is set (False)."""
        while not stop.is_set():
            if self.try_acquire():
                return True
            stop.wait(POLL_SECONDS)
        return False

    def record(self, owner: Owner) -> None:
        """Write the owner record (atomically: a reader never sees half of it)."""
        target = self.processing / OWNER_NAME
        tmp = write_atomic(self.processing, json.dumps(asdict(owner)).encode("utf-8"))
        try:
            os.replace(tmp, target)
        except OSError:
            os.unlink(tmp)
            raise
        fsync_dir(self.processing)

    def release(self) -> None:
        """Give the folders up (a standby may take them at once)."""
        for lock in reversed(self._locks):
            if lock.is_locked:
                lock.release()
        pinned, self._pinned = self._pinned, None
        if pinned is not None:
            os.close(pinned)  # flock locks belong to filelock's descriptor: this one holds none


def _inbox_lock(inbox: Path) -> FileLock | _FolderFlock:
    return _lock(inbox) if os.name == "nt" else _FolderFlock(inbox)


def is_held(inbox: Path, processing: Path) -> bool:
    """Whether a live service holds these folders now (without keeping the lock)."""
    if not processing.is_dir() or not inbox.is_dir():
        return False
    probe = FolderLock(inbox, processing)
    try:
        if probe.try_acquire():
            probe.release()
            return False
    except LockError:
        return False
    return True
