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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from watcher.folders import identity
from watcher.folders.durable import fsync_dir, write_atomic

__all__ = [
    "DataDirLock",
    "DataDirTaken",
    "FolderLock",
    "LockError",
    "Owner",
    "is_held",
    "read_owner",
    "wait_for",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".dropflow.lock"
OWNER_NAME = ".dropflow-owner.json"
DATA_DIR_WAIT = 30.0
"""Seconds a service waits for a dead predecessor's embedded server to let `data_dir` go."""
POLL_SECONDS = 0.1
"""How often a standby tries the lock: its takeover comes at most this long after the
owner's death (plus its own start-up)."""


class LockError(Exception):
    """The folders cannot be locked at all (no lock support, no permission)."""


class DataDirTaken(Exception):
    """Another service uses the embedded default's `data_dir`."""


@dataclass(frozen=True)
class Owner:
    """The service that holds a set of folders."""

    pid: int
    host: str
    since: str
    runner: str = ""
    api: str = ""
    runner_down: str = ""
    """Why the runner cannot run jobs, and since when; empty while it can."""

    def describe(self) -> str:
        """One line naming the owner: pid, host and since when."""
        return f"pid {self.pid} on {self.host}, since {self.since}"

    @classmethod
    def me(cls, since: str, runner: str = "", api: str = "") -> Owner:
        """This process."""
        return cls(os.getpid(), socket.gethostname(), since, runner, api)


def read_owner(processing: Path) -> Owner | None:
    """The owner recorded for the folders (or a `data_dir`), or None if there is no readable
    record."""
    try:
        data = json.loads((processing / OWNER_NAME).read_text(encoding="utf-8"))
        fields = {k: data[k] for k in ("pid", "host", "since", "runner", "api")}
        return Owner(**fields, runner_down=str(data.get("runner_down", "")))
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

    @property
    def fd(self) -> int | None:
        """The locked descriptor, while locked."""
        return self._fd

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
        return wait_for(self.try_acquire, stop)

    def record(self, owner: Owner) -> None:
        """Write the owner record (atomically: a reader never sees half of it)."""
        _record(self.processing, owner)

    def release(self) -> None:
        """Give the folders up (a standby may take them at once)."""
        for lock in reversed(self._locks):
            if lock.is_locked:
                lock.release()
        pinned, self._pinned = self._pinned, None
        if pinned is not None:
            os.close(pinned)  # flock locks belong to filelock's descriptor: this one holds none


def wait_for(try_acquire: Callable[[], bool], stop: threading.Event) -> bool:
    """Call `try_acquire` every `POLL_SECONDS` until it takes its locks (True) or `stop` is
    set (False): how a standby waits."""
    while not stop.is_set():
        if try_acquire():
            return True
        stop.wait(POLL_SECONDS)
    return False


def _inbox_lock(inbox: Path) -> FileLock | _FolderFlock:
    return _lock(inbox) if os.name == "nt" else _FolderFlock(inbox)


def _record(folder: Path, owner: Owner) -> None:
    tmp = write_atomic(folder, json.dumps(asdict(owner)).encode("utf-8"))
    try:
        os.replace(tmp, folder / OWNER_NAME)
    except OSError:
        os.unlink(tmp)
        raise
    fsync_dir(folder)


class DataDirLock:
    """The embedded default's `data_dir` (its PostgreSQL cluster and the Prefect history), for
    one service at a time: two services on one cluster stop it under each other.

    A flock on the folder itself, like the inbox's. On POSIX the embedded server process
    inherits the locked descriptor (`fds`), so the folder stays locked until that process
    too has gone, having stopped PostgreSQL: a service that takes over (a standby, or systemd's
    restart) never starts a cluster that its predecessor's server is still stopping. Windows
    has no such inheritance: there a lock file `<data_dir>/.dropflow.lock` is held by the
    service alone.
    """

    def __init__(self, data_dir: Path, *, folder_lock: bool = os.name != "nt") -> None:
        """`folder_lock`: flock the folder (POSIX), or hold a lock file in it (Windows)."""
        self.data_dir = data_dir
        self._lock: FileLock | _FolderFlock = (
            _FolderFlock(data_dir) if folder_lock else _lock(data_dir)
        )
        self._me: Owner | None = None

    def acquire(self, me: Owner, stop: threading.Event, wait: float = DATA_DIR_WAIT) -> None:
        """Take the lock and record `me` as its owner. A lock held by a service that has died
        (its embedded server still stopping) is waited for, up to `wait` seconds.

        Raises:
            DataDirTaken: a live service holds it (or a dead one's server never let it go).
            LockError: the folder cannot be locked.
        """
        from watcher.server.embedded import EmbeddedServerError, check_data_dir

        try:
            check_data_dir(self.data_dir)  # made if missing, and writable
        except EmbeddedServerError as exc:
            raise LockError(str(exc)) from None
        deadline = time.monotonic() + wait
        while True:
            try:
                self._lock.acquire(blocking=False)
                break
            except Timeout:
                owner = read_owner(self.data_dir)
                alive = owner is not None and _alive(owner)
                if alive or time.monotonic() >= deadline or stop.is_set():
                    who = owner.describe() if owner else "owner unknown"
                    state = "" if alive else " (its embedded server has not stopped)"
                    raise DataDirTaken(
                        f"data_dir {self.data_dir} is used by another dropflow ({who}){state}; "
                        "give each service a data_dir of its own"
                    ) from None
                stop.wait(POLL_SECONDS)
            except (OSError, NotImplementedError) as exc:
                raise LockError(f"cannot lock data_dir {self.data_dir}: {exc}") from exc
        self._me = me
        _record(self.data_dir, me)

    def fds(self) -> tuple[int, ...]:
        """The descriptors that hold the lock, for the embedded server process to inherit.

        A `data_dir` deleted and made again since it was locked (the embedded server recreates
        it) is locked anew first: the old lock holds only the deleted folder.

        Raises:
            DataDirTaken: another service took the new folder meanwhile.
        """
        lock = self._lock
        if not isinstance(lock, _FolderFlock) or lock.fd is None:
            return ()
        locked, now = os.fstat(lock.fd), os.stat(self.data_dir)
        if (locked.st_dev, locked.st_ino) != (now.st_dev, now.st_ino) and self._me is not None:
            fresh = _FolderFlock(self.data_dir)
            try:
                fresh.acquire(blocking=False)
            except Timeout:
                raise DataDirTaken(
                    f"data_dir {self.data_dir} was made again and is now used by another dropflow"
                ) from None
            lock.release()
            self._lock = lock = fresh
            _record(self.data_dir, self._me)
        assert lock.fd is not None
        return (lock.fd,)

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def _alive(owner: Owner) -> bool:
    """Whether the owner's process runs (an owner on another host counts as alive)."""
    import psutil

    if owner.host != socket.gethostname():
        return True
    return bool(psutil.pid_exists(owner.pid))


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
