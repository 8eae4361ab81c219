"""Durable file primitives: the only place dropflow creates, links, renames or copies files.

Every step of the job lifecycle is built from these, and each is safe to cut at any point:
a crash leaves either the old state or the new one, plus at most a hidden temp file
(`TEMP_PREFIX`) that the next start removes. Each primitive takes the fallback path where the
platform lacks a feature (see `watcher.portable`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from watcher import defaults, portable

__all__ = [
    "NO_LINK",
    "TEMP_PREFIX",
    "copy_into",
    "fsync_dir",
    "link_or_rename",
    "place",
    "same_file",
    "write_atomic",
]

TEMP_PREFIX = ".dropflow-tmp-"
"""Hidden names of files not yet complete; whatever carries it after a crash is removed."""

NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)
"""Why a hard link can fail where a copy or rename still works: another file system, FAT,
a share without links, too many links."""


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable. A no-op where unsupported."""
    if not portable.current().dir_fsync:
        return  # Windows cannot open a folder; NTFS journals renames itself.
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _create_flags() -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    if portable.current().nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    return flags


def _write_new(tmp: Path, fill: Callable[[int], None]) -> Path:
    """Create `tmp` exclusively, let `fill` write it through its descriptor, fsync it.

    The file gets `defaults.RESULT_FILE_MODE` whatever the umask; on any failure it is
    removed again.
    """
    fd = os.open(tmp, _create_flags(), defaults.RESULT_FILE_MODE)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, defaults.RESULT_FILE_MODE)  # the umask may have narrowed it
        fill(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def write_atomic(folder: Path, data: bytes, name: str | None = None) -> Path:
    """Write `data` to a new hidden temp file in `folder`, fsync it, and return its path.

    The file is created exclusively (O_EXCL: nothing planted at the name is ever followed or
    overwritten). `name` fixes the temp name's suffix (a random one otherwise).
    """

    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return _write_new(folder / f"{TEMP_PREFIX}{name or secrets.token_hex(8)}", fill)


def copy_into(folder: Path, source: Path, name: str) -> Path:
    """Copy `source` to the temp file `folder/TEMP_PREFIX + name`, fsynced; return its path.

    For moves to another file system. A temp of that name left by a crash is replaced.
    """
    tmp = folder / f"{TEMP_PREFIX}{name}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)

    def fill(fd: int) -> None:
        with open(source, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)

    return _write_new(tmp, fill)


def place(tmp: Path, target: Path) -> None:
    """Give the complete temp file `tmp` the name `target`, never replacing a file there.

    A hard link where possible (atomic, fails if `target` exists), then the temp is removed;
    elsewhere an existence check and a rename: the service is the only writer of these
    names, so the check cannot race with itself.

    Raises:
        FileExistsError: `target` exists; `tmp` is left as it is.
    """
    if portable.current().hard_links:
        try:
            os.link(tmp, target, follow_symlinks=False)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in NO_LINK:
                raise
        else:
            os.unlink(tmp)
            fsync_dir(target.parent)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "file exists", str(target))
    os.rename(tmp, target)
    fsync_dir(target.parent)


def link_or_rename(source: Path, target: Path) -> bool:
    """Give `source`'s file the new name `target` too; True if it is a hard link.

    False: links are impossible here, so `source` was renamed to `target` instead (same file
    system only). A file its writer still holds open is refused as on Windows.

    Raises:
        FileNotFoundError: `source` is gone.
        PermissionError: the file is still open by its writer (where moving it is refused).
    """
    portable.ensure_movable(source)
    if portable.current().hard_links:
        try:
            os.link(source, target, follow_symlinks=False)
            return True
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno not in NO_LINK:
                raise
    os.rename(source, target)
    return False


def same_file(a: Path, b: Path) -> bool:
    """Whether two names are one file (neither followed if a symlink); False if one is gone."""
    try:
        x, y = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
