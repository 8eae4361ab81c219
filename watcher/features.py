"""What the platform offers the file lifecycle, and a switch to take it away for tests.

Linux gives dropflow close-after-write events, hard links, `O_NOFOLLOW`, folder fsync and
the freedom to move a file another process still has open. Other platforms lack some of
these (Windows has no close events, no folder fsync, no `O_NOFOLLOW`, and refuses to move a
file its writer still has open; FAT and many shares have no hard links). Every such path has
a fallback; `Platform.portable()` forces all of them on Linux, so the test suite runs the
service the way other platforms do. The CLI turns it on from `DROPFLOW_PORTABLE=1` (the core
never reads the environment).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["Platform", "current", "ensure_movable", "use"]

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "DROPFLOW_PORTABLE"
"""Set to 1 to run with every fallback forced (see `Platform.portable`)."""

_F_SETLEASE = 1024  # fcntl.F_SETLEASE on Linux; the module only gained the name in 3.12
_F_RDLCK, _F_UNLCK = 0, 2


@dataclass(frozen=True)
class Platform:
    """The file-system features in use; each False forces the fallback for that feature."""

    close_events: bool = True
    """Trust close-after-write events (only inotify has them) to tell a file is complete."""
    hard_links: bool = True
    """Claim and publish with hard links (never replace, never follow); else rename/copy."""
    nofollow: bool = True
    """Open with `O_NOFOLLOW`; else compare lstat and fstat to refuse a swapped-in link."""
    dir_fsync: bool = True
    """fsync folders after renames; else rely on the file system's own journal."""
    open_files_move: bool = True
    """A file still open by its writer can be moved (POSIX); Windows refuses with a sharing
    violation, which the service retries."""
    forkserver: bool = True
    """Start a sync flow's process by forking a server that has Prefect imported already
    (POSIX); else spawn a fresh interpreter for each (Windows)."""

    @classmethod
    def native(cls) -> Platform:
        """What this platform has."""
        return cls(
            close_events=True,
            hard_links=hasattr(os, "link"),
            nofollow=hasattr(os, "O_NOFOLLOW"),
            dir_fsync=os.name != "nt",
            open_files_move=os.name != "nt",
            forkserver="forkserver" in multiprocessing.get_all_start_methods(),
        )

    @classmethod
    def portable(cls) -> Platform:
        """Every fallback at once: what the least capable supported platform offers."""
        return replace(
            cls.native(),
            close_events=False,
            hard_links=False,
            nofollow=False,
            dir_fsync=False,
            open_files_move=False,
            forkserver=False,
        )


_current = Platform.native()


def current() -> Platform:
    """The platform features in use by this process."""
    return _current


def use(platform: Platform) -> None:
    """Use `platform`'s features from now on (the CLI calls this once, before serving)."""
    global _current
    _current = platform
    if platform != Platform.native():
        logger.info("portable mode: %s", platform)


def ensure_movable(path: Path) -> None:
    """Refuse, as Windows does, to move a file that another process has open for writing.

    Only acts when `open_files_move` is off and the platform is POSIX: Windows itself raises
    the sharing violation. On Linux a read lease is granted only while no process has the
    file open for writing, which is exactly Windows' rule for a writer without
    FILE_SHARE_DELETE.

    Raises:
        PermissionError: the file is open for writing elsewhere (retry later).
    """
    if _current.open_files_move or os.name == "nt":
        return
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return  # gone or not a plain file: the move itself reports it
    try:
        fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            raise PermissionError(
                errno.EACCES, "the file is still open by its writer (sharing violation)", str(path)
            ) from None
        # Leases unsupported here (some network file systems): nothing to simulate.
    else:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
    finally:
        os.close(fd)
