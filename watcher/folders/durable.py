"""Durable file primitives: fsync a folder, write atomically, link or rename without replacing,
move across file systems.

Claims, results, the lock and `submit` build the job lifecycle's steps from these; each is safe
to cut at any point: a crash leaves either the old state or the new one, plus at most a hidden
temp file (`TEMP_PREFIX`) that the next start removes. Each primitive takes the fallback path
where the platform lacks a feature (see `watcher.features`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from watcher import defaults, features

__all__ = [
    "NO_LINK",
    "TEMP_PREFIX",
    "copy_into",
    "fsync_dir",
    "link_or_rename",
    "make_folders",
    "place",
    "rename_exclusive",
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
    if not features.current().dir_fsync:
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


def make_folders(folder: Path) -> None:
    """Create `folder` and whichever of its parents are missing, each made durable in its
    parent: a new dated archive folder survives a power cut with the file moved into it.

    Raises:
        FileExistsError: a file, not a folder, holds one of those names.
    """
    missing: list[Path] = []
    current = folder
    while not current.is_dir() and current.parent != current:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
        fsync_dir(path.parent)


def _create_flags() -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    if features.current().nofollow:
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
    if features.current().hard_links:
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
    features.ensure_movable(source)
    if features.current().hard_links:
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


_RENAME_NOREPLACE = 1  # Linux <linux/fs.h>
_RENAME_EXCL = 4  # macOS <stdio.h>, for renamex_np
_AT_FDCWD = -100


@functools.cache
def _rename_noreplace_call() -> Callable[[bytes, bytes], int] | None:
    """The C call that renames without replacing, where the C library has one."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        call = libc.renameat2
        return lambda a, b: int(call(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_NOREPLACE))
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        call = libc.renamex_np
        return lambda a, b: int(call(a, b, _RENAME_EXCL))
    return None


def rename_exclusive(source: Path, target: Path) -> None:
    """Rename `source` to `target` in one atomic step that never replaces a file there.

    For writers that share a folder with other writers (`dropflow submit`): `os.rename`
    replaces silently, and a check before it races with the other writer. Written by hand
    because Python has no no-replace rename: Linux's `renameat2(RENAME_NOREPLACE)` and macOS's
    `renamex_np(RENAME_EXCL)` through ctypes; Windows' `os.rename` never replaces.

    Raises:
        FileExistsError: `target` exists.
        NotImplementedError: the platform or the file system cannot rename without
            replacing; the caller picks a name nobody else can be using.
    """
    if os.name == "nt":
        os.rename(source, target)
        return
    call = _rename_noreplace_call()
    if call is None:
        raise NotImplementedError("no rename without replace here")
    if call(os.fsencode(source), os.fsencode(target)) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        raise NotImplementedError(f"{target.parent}: no rename without replace here")
    raise OSError(code, os.strerror(code), str(target))


def same_file(a: Path, b: Path) -> bool:
    """Whether two names are one file (neither followed if a symlink); False if one is gone."""
    try:
        x, y = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
